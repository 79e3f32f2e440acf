// Owns: a small event emitter (on/off/once/emit) that runs in browsers and Node.js
// alike. A listener that throws does not stop the others (it is logged), and an
// "error" without a listener is logged rather than thrown.

export class Emitter {
  constructor() {
    Object.defineProperty(this, "_listeners", { value: new Map(), enumerable: false });
  }

  on(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(fn);
    return this;
  }

  off(type, fn) {
    this._listeners.get(type)?.delete(fn);
    return this;
  }

  once(type, fn) {
    const wrapper = (...args) => {
      this.off(type, wrapper);
      fn(...args);
    };
    return this.on(type, wrapper);
  }

  /** Call the listeners of `type`; whether there was any. */
  emit(type, ...args) {
    const listeners = this._listeners.get(type);
    if (!listeners || listeners.size === 0) {
      if (type === "error") console.warn("treescale: an error nobody listens to:", args[0]);
      return false;
    }
    for (const fn of [...listeners]) {
      try {
        fn(...args);
      } catch (err) {
        console.error(`treescale: a "${type}" listener threw`, err);
      }
    }
    return true;
  }
}
