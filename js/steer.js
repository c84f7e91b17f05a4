// Steer's front-end extension: gives every Steer node one recognisable colour in the graph.
import { app } from "../../scripts/app.js";

const STEER_COLOR = "#223a4d";
const STEER_BGCOLOR = "#35566e";

app.registerExtension({
  name: "steer.appearance",
  nodeCreated(node) {
    if (node.comfyClass?.startsWith("Steer")) {
      node.color = STEER_COLOR;
      node.bgcolor = STEER_BGCOLOR;
    }
  },
});
