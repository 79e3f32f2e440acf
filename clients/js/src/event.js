// Owns: Event, one delivered event (or reply) as an application sees it, and how it
// answers a request (respond). Decoding the batch it came in is codec.js's.

import { decode } from "@msgpack/msgpack";

const utf8 = new TextDecoder();
const NO_HEADERS = Object.freeze({});

export class Event {
  /**
   * @param {object} fields  {name, data, source, headers, reply, target}
   * @param {object|null} client  who answers respond() (the client it arrived on)
   */
  constructor({ name, data, source = null, headers = null, reply = null, target = null }, client = null) {
    this.name = name;
    this.data = data; // Uint8Array (a view into the message it came in)
    this.source = source; // the publisher's name
    this.headers = headers || NO_HEADERS;
    this.reply = reply; // the requester's inbox when this is a request
    this.target = target;
    Object.defineProperty(this, "_client", { value: client, enumerable: false });
  }

  /** The payload as UTF-8 text. */
  text() {
    return utf8.decode(this.data);
  }

  /** The payload as JSON (JSON text); json("msgpack") decodes msgpack, the
   * convention of the Python client's Event.json(). */
  json(format = "json") {
    if (format === "msgpack") return decode(this.data);
    return JSON.parse(this.text());
  }

  /** Answer this request event (call it again to stream more replies). */
  respond(data = "", headers = null) {
    if (!this.reply) throw new TypeError(`event ${this.name} is not a request (no reply inbox)`);
    if (!this._client) throw new TypeError("this event came from no client");
    this._client.reply(this.reply, data, headers);
  }
}
