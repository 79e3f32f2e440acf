// Owns: the package's public names: connect, Client, Subscription, TreeScaleError,
// Event. Nothing else is part of the API.

export { connect, Client, Subscription } from "./client.js";
export { TreeScaleError } from "./errors.js";
export { Event } from "./event.js";
