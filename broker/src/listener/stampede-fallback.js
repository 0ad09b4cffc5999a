/*
 * Stampede fallback shim: STOMP without WebSocket, for @stomp/stompjs.
 * Served by the broker at /stampede-fallback.js. Licensed Apache-2.0, like Stampede.
 *
 * The broker's bytes arrive by Server-Sent Events (base64 chunks, numbered, resumable with
 * Last-Event-ID); the client's frames leave by HTTP POST, one request at a time, in order.
 * StampedeFallback.socket(baseUrl) is an IStompSocket; StampedeFallback.factory(wsUrl) tries
 * a WebSocket first and switches to the fallback when one cannot be opened:
 *
 *   const client = new StompJs.Client({
 *     webSocketFactory: StampedeFallback.factory('ws://broker.example:15674/ws'),
 *   });
 */
(function (global) {
  'use strict';

  var CONNECTING = 0, OPEN = 1, CLOSING = 2, CLOSED = 3;
  var PREFIX = '/stampede-fallback';
  var PROTOCOLS = ['v12.stomp', 'v11.stomp', 'v10.stomp'];

  function httpBase(url) {
    // ws://host:port/ws -> http://host:port ; http(s)://host:port[/...] -> same origin
    var u = new URL(url, global.location ? global.location.href : undefined);
    var scheme = u.protocol === 'wss:' || u.protocol === 'https:' ? 'https:' : 'http:';
    return scheme + '//' + u.host;
  }

  function decode(b64) {
    var text = global.atob(b64);
    var bytes = new Uint8Array(text.length);
    for (var i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    return bytes;
  }

  /** An IStompSocket over SSE (broker to client) and POST (client to broker). */
  function FallbackSocket(baseUrl) {
    this.url = httpBase(baseUrl || global.location.href) + PREFIX;
    this.readyState = CONNECTING;
    this.binaryType = 'arraybuffer';
    this.protocol = 'v12.stomp';
    this.onopen = null;
    this.onmessage = null;
    this.onerror = null;
    this.onclose = null;
    this._lastEventId = null;
    this._sending = Promise.resolve();
    this._source = null;
    this._session = null;
    this._failures = 0;
    var self = this;
    global.fetch(this.url + '/sessions', { method: 'POST' }).then(function (response) {
      if (!response.ok) throw new Error('fallback session refused: HTTP ' + response.status);
      return response.json();
    }).then(function (session) {
      if (self.readyState >= CLOSING) return;
      self._session = session;
      self._listen();
    }).catch(function (error) {
      self._fail(1006, String(error && error.message || error));
    });
  }

  FallbackSocket.prototype._listen = function () {
    var self = this;
    var url = httpBase(this.url) + this._session.events;
    if (this._lastEventId !== null) url += '?last_event_id=' + encodeURIComponent(this._lastEventId);
    var source = new global.EventSource(url);
    this._source = source;
    source.onopen = function () {
      self._failures = 0;
      if (self.readyState === CONNECTING) {
        self.readyState = OPEN;
        if (self.onopen) self.onopen({ type: 'open' });
      }
    };
    source.onmessage = function (event) {
      if (event.lastEventId) self._lastEventId = event.lastEventId;
      var bytes = decode(event.data);
      if (self.onmessage && self.readyState === OPEN) {
        self.onmessage({ data: self.binaryType === 'arraybuffer' ? bytes.buffer : new TextDecoder().decode(bytes) });
      }
    };
    source.addEventListener('end', function () {
      source.close();
      self._closed(1000, 'session ended', true);
    });
    source.onerror = function () {
      // The stream broke: resume from the last event seen, on a new stream, a few times.
      source.close();
      if (self.readyState >= CLOSING) return;
      self._failures += 1;
      if (self._failures > 5) {
        self._fail(1006, 'event stream lost');
        return;
      }
      setTimeout(function () { if (self.readyState < CLOSING) self._listen(); }, 250 * self._failures);
    };
  };

  FallbackSocket.prototype.send = function (data) {
    if (this.readyState !== OPEN) throw new Error('fallback socket is not open');
    var self = this;
    var body = typeof data === 'string' ? data : new Uint8Array(data);
    var url = httpBase(this.url) + this._session.frames;
    this._sending = this._sending.then(function () {
      return global.fetch(url, { method: 'POST', body: body, headers: { 'Content-Type': 'application/octet-stream' } });
    }).then(function (response) {
      if (!response.ok && self.readyState < CLOSING) self._fail(1006, 'frames refused: HTTP ' + response.status);
    }, function (error) {
      if (self.readyState < CLOSING) self._fail(1006, String(error && error.message || error));
    });
  };

  FallbackSocket.prototype.close = function () {
    if (this.readyState >= CLOSING) return;
    this.readyState = CLOSING;
    var self = this;
    var session = this._session;
    // Frames already handed to send() (a DISCONNECT, say) go first.
    this._sending.then(function () {
      if (session) return global.fetch(httpBase(self.url) + PREFIX + '/sessions/' + session.session, { method: 'DELETE' });
    }).catch(function () {}).then(function () {
      if (self._source) self._source.close();
      self._closed(1000, 'closed by the client', true);
    });
  };

  FallbackSocket.prototype.terminate = function () {
    if (this._source) this._source.close();
    this._closed(1006, 'terminated', false);
  };

  FallbackSocket.prototype._fail = function (code, reason) {
    if (this.onerror) this.onerror({ type: 'error', message: reason });
    if (this._source) this._source.close();
    this._closed(code, reason, false);
  };

  FallbackSocket.prototype._closed = function (code, reason, clean) {
    if (this.readyState === CLOSED) return;
    this.readyState = CLOSED;
    if (this.onclose) this.onclose({ type: 'close', code: code, reason: reason, wasClean: clean });
  };

  /**
   * A WebSocket when one opens; otherwise the fallback, from then on for this page (a network
   * that blocks WebSocket once blocks it again on every reconnect).
   */
  function AutoSocket(wsUrl) {
    this.url = wsUrl;
    this.readyState = CONNECTING;
    this.binaryType = 'arraybuffer';
    this.onopen = this.onmessage = this.onerror = this.onclose = null;
    this._inner = null;
    if (!global.WebSocket || StampedeFallback.forced) {
      this._use(new FallbackSocket(wsUrl));
      return;
    }
    var self = this;
    var ws;
    try {
      ws = new global.WebSocket(wsUrl, PROTOCOLS);
    } catch (e) {
      this._use(new FallbackSocket(wsUrl));
      return;
    }
    var opened = false;
    ws.onopen = function (e) { opened = true; self._use(ws); if (self.onopen) self.onopen(e); };
    ws.onclose = function (e) {
      if (!opened) {
        StampedeFallback.forced = true;
        self._use(new FallbackSocket(wsUrl));
      } else if (self.onclose) {
        self.onclose(e);
      }
    };
    ws.onerror = function (e) { if (opened && self.onerror) self.onerror(e); };
    this._pending = ws;
  }

  AutoSocket.prototype._use = function (inner) {
    var self = this;
    this._inner = inner;
    inner.binaryType = this.binaryType;
    this.protocol = inner.protocol;
    inner.onmessage = function (e) { if (self.onmessage) self.onmessage(e); };
    inner.onerror = function (e) { if (self.onerror) self.onerror(e); };
    inner.onclose = function (e) { self.readyState = CLOSED; if (self.onclose) self.onclose(e); };
    if (inner instanceof FallbackSocket) {
      inner.onopen = function (e) { self.readyState = OPEN; if (self.onopen) self.onopen(e); };
    } else {
      this.readyState = OPEN;
    }
  };

  AutoSocket.prototype.send = function (data) { this._inner.send(data); };
  AutoSocket.prototype.close = function () {
    if (this._inner) this._inner.close();
    else if (this._pending) this._pending.close();
    this.readyState = CLOSED;
  };

  var StampedeFallback = {
    forced: false,
    FallbackSocket: FallbackSocket,
    /** An IStompSocket on the fallback transport of the broker at `url` (ws:, http: or a page URL). */
    socket: function (url) { return new FallbackSocket(url); },
    /** A webSocketFactory for stompjs: WebSocket first, the fallback when it cannot open. */
    factory: function (wsUrl) { return function () { return new AutoSocket(wsUrl); }; },
  };
  global.StampedeFallback = StampedeFallback;
})(typeof window !== 'undefined' ? window : globalThis);
