"""The quality lab: Steer's methods on a class-conditional Gaussian mixture whose exact denoiser is closed form."""
