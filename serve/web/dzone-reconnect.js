/* dzone-reconnect.js: added by `dzone serve --static-dir` to the d-zone client's index.html, before its
 * bundle (docs/deploy.md, "What a viewer sees on a restart").
 *
 * The d-zone client never reconnects: when its socket closes it moves to its next URL, the last of which is
 * another person's server. This wraps window.WebSocket so that the page's socket, once open, survives a
 * server close: it reconnects to the same URL with a bounded, jittered backoff, swallows the new server's
 * server-list (the page has one), sends the page's last `connect` again (the server answers with a fresh
 * server-join, which rebuilds the town) and never shows the page a close or an error. The bundle itself
 * is not changed. Sockets to hosts other than the page's own and its `socketURL` are never opened.
 */
(function () {
  "use strict";
  var Native = window.WebSocket;
  if (!Native || Native.dzoneNative) return; // loaded twice

  var FIRST_RETRY_MS = 250; // the first retry waits 0-250 ms: viewers closed together come back apart
  var MAX_RETRY_MS = 10000; // the backoff's bound
  var FIRST_OPEN_PATIENCE_MS = 10000; // a URL that never opened is handed back to the page after this
  var QUEUE_MAX = 16; // frames the page sends while reconnecting (it only ever sends `connect`)
  // Offered (the serve selects it) so that a draining serve knows this page comes back: serve/handover.py
  var RECONNECTS = "dzone-reconnect";

  var state = { sockets: [], blocked: [], reconnects: 0 }; // read by tests and curious operators
  window.dzoneReconnect = state;

  var page = new URL(window.location.href);
  var ours = [page.hostname];
  var named = page.searchParams.get("socketURL");
  if (named) {
    try {
      ours.push(new URL(named, page.href).hostname);
    } catch (e) {
      console.warn("dzone-reconnect: socketURL is not a URL", named);
    }
  }

  function allowed(url) {
    try {
      return ours.indexOf(new URL(url, page.href).hostname) !== -1;
    } catch (e) {
      return true; // the native constructor throws its own SyntaxError for it
    }
  }

  function typeOf(data) {
    if (typeof data !== "string") return null;
    try {
      var frame = JSON.parse(data);
      return frame && typeof frame === "object" ? frame.type : null;
    } catch (e) {
      return null;
    }
  }

  class ReconnectingWebSocket extends EventTarget {
    constructor(url, protocols) {
      super();
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      this.binaryType = "blob";
      this._url = String(url);
      var none = protocols === undefined || protocols === null || protocols.length === 0;
      this._protocols = none ? [RECONNECTS] : protocols;
      this._state = Native.CONNECTING;
      this._socket = null;
      this._opened = false; // the page saw `open`
      this._closedByPage = false;
      this._hasServerList = false; // the page has been given a server-list
      this._awaitingList = false; // reconnected: the new server's server-list comes first
      this._lastConnect = null;
      this._queue = [];
      this._attempt = 0;
      this._timer = null;
      this._created = Date.now();
      if (allowed(this._url)) {
        this._connect();
        this._url = this._socket.url;
      } else {
        state.blocked.push(this._url); // never opened: the page waits rather than visit another's server
        console.warn("dzone-reconnect: not opening a socket to another host", this._url);
      }
    }

    get url() {
      return this._url;
    }
    get readyState() {
      return this._state;
    }
    get protocol() {
      return this._socket ? this._socket.protocol : "";
    }
    get extensions() {
      return this._socket ? this._socket.extensions : "";
    }
    get bufferedAmount() {
      return this._socket ? this._socket.bufferedAmount : 0;
    }

    send(data) {
      if (this._state === Native.CLOSING || this._state === Native.CLOSED) {
        throw new DOMException("WebSocket is already in CLOSING or CLOSED state.", "InvalidStateError");
      }
      if (typeOf(data) === "connect") this._lastConnect = data;
      var live = this._socket && this._socket.readyState === Native.OPEN && !this._awaitingList;
      if (live) this._socket.send(data);
      else if (this._queue.length < QUEUE_MAX) this._queue.push(data);
    }

    close(code, reason) {
      if (this._state === Native.CLOSING || this._state === Native.CLOSED) return;
      this._closedByPage = true;
      this._state = Native.CLOSING;
      clearTimeout(this._timer);
      if (this._socket) {
        this._socket.close(code, reason);
      } else {
        this._state = Native.CLOSED;
        var self = this;
        setTimeout(function () {
          self._emit(new CloseEvent("close", { code: 1005, reason: "", wasClean: true }));
        }, 0);
      }
    }

    _connect() {
      var ws = new Native(this._url, this._protocols);
      ws.binaryType = this.binaryType;
      state.sockets.push(ws.url);
      this._socket = ws;
      var self = this;
      ws.addEventListener("open", function () {
        self._onOpen(ws);
      });
      ws.addEventListener("message", function (event) {
        self._onMessage(ws, event);
      });
      ws.addEventListener("close", function (event) {
        self._onClose(ws, event);
      });
      // an error is always followed by a close, handled there; the page must not see it (it moves on)
    }

    _onOpen(ws) {
      if (ws !== this._socket) return;
      this._attempt = 0;
      this._state = Native.OPEN;
      if (this._opened) {
        state.reconnects += 1;
        this._awaitingList = true;
        return;
      }
      this._opened = true;
      this._flush(null);
      this._emit(new Event("open"));
    }

    _onMessage(ws, event) {
      if (ws !== this._socket) return;
      if (this._awaitingList) {
        this._awaitingList = false;
        var isList = typeOf(event.data) === "server-list";
        if (isList && this._hasServerList) {
          this._flush(this._lastConnect);
          return;
        }
        this._flush(null);
      }
      if (!this._hasServerList && typeOf(event.data) === "server-list") this._hasServerList = true;
      this._emit(
        new MessageEvent("message", { data: event.data, origin: event.origin, lastEventId: event.lastEventId })
      );
    }

    _onClose(ws, event) {
      if (ws !== this._socket) return;
      this._socket = null;
      this._awaitingList = false;
      var givingUp = !this._opened && Date.now() - this._created > FIRST_OPEN_PATIENCE_MS;
      if (this._closedByPage || givingUp) {
        this._state = Native.CLOSED;
        if (givingUp) this._emit(new Event("error"));
        this._emit(new CloseEvent("close", { code: event.code, reason: event.reason, wasClean: event.wasClean }));
        return;
      }
      var bound = Math.min(MAX_RETRY_MS, FIRST_RETRY_MS * Math.pow(2, this._attempt));
      var delay = this._attempt === 0 ? Math.random() * bound : bound / 2 + (Math.random() * bound) / 2;
      this._attempt += 1;
      var self = this;
      this._timer = setTimeout(function () {
        self._connect();
      }, delay);
    }

    _flush(connect) {
      var frames = this._queue;
      this._queue = [];
      if (connect !== null && frames.indexOf(connect) === -1) frames.unshift(connect);
      for (var i = 0; i < frames.length; i++) this._socket.send(frames[i]);
    }

    _emit(event) {
      this.dispatchEvent(event);
      var handler = this["on" + event.type];
      if (typeof handler === "function") handler.call(this, event);
    }
  }

  ["CONNECTING", "OPEN", "CLOSING", "CLOSED"].forEach(function (name) {
    ReconnectingWebSocket[name] = Native[name];
    ReconnectingWebSocket.prototype[name] = Native[name];
  });
  ReconnectingWebSocket.dzoneNative = Native;
  window.WebSocket = ReconnectingWebSocket;
})();
