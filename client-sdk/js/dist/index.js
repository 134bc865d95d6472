/**
 * The presence platform's client for browsers and Node.js: the same
 * behaviour as the Rust SDK (`client-sdk/`), with no runtime dependencies.
 *
 * - `PresenceClient` asks the coordinator where a user lives (`route`,
 *   `routes`) and, with an API key on the admin listener, what users'
 *   presence is (`status`).
 * - `PresenceClient.connect` returns a `Session` that keeps the user
 *   connected: it routes through the coordinator and follows `redirect`s; on
 *   `reconnect` (a handoff) it connects to the new node *before* letting the
 *   old connection go, so the user is never seen offline; after a drop it
 *   reconnects with exponential backoff and full jitter, routing again, and
 *   subscribes again; it asks the token callback for a fresh token when the
 *   server says the old one expired, and refreshes ahead of expiry; it gives
 *   up only after `backoff.maxAttempts` failures in a row, when that is set.
 *
 * The wire protocol is `docs/protocol.md` in the repository.
 *
 * @packageDocumentation
 */
/** An error with the server's code (`docs/protocol.md`, "Error codes"), or `gave_up`, `network`, `closed`. */
export class PresenceError extends Error {
    /** Machine-readable code. */
    code;
    /** The HTTP status, for API errors. */
    status;
    constructor(code, message, status) {
        super(message);
        this.name = "PresenceError";
        this.code = code;
        this.status = status;
    }
}
/** The default backoff. */
export const DEFAULT_BACKOFF = { initialMs: 250, maxMs: 10_000 };
/**
 * The delay before attempt `attempt` (1 for the first retry): half of the
 * capped exponential step, plus a random part of the other half, so that
 * clients dropped together do not come back together.
 */
export function backoffDelay(b, attempt, random = Math.random) {
    const step = Math.min(b.initialMs * 2 ** Math.min(Math.max(attempt - 1, 0), 20), b.maxMs);
    return step / 2 + (step / 2) * random();
}
/** Most user IDs per `subscribe` message and per batch call. */
const BATCH = 500;
/** Redirects followed in a row before the chain counts as a failed attempt. */
const MAX_REDIRECTS = 5;
/** Pause before following the n-th redirect of a chain (n times this). */
const REDIRECT_PAUSE_MS = 50;
/** A client of one presence cluster, through its coordinator. */
export class PresenceClient {
    coordinator;
    options;
    /** A client of the cluster whose coordinator is at `coordinator` (`http://host:port`). */
    constructor(coordinator, options = {}) {
        this.coordinator = coordinator.replace(/\/+$/, "");
        this.options = options;
    }
    /**
     * Where `userId` connects (`GET /route`). With `unreachable`, the node the
     * caller lost or could not reach: while that node still owns the user and
     * its address refuses connections, the coordinator answers once the user
     * has moved (within a few seconds), so a reconnect need not guess when.
     */
    async route(userId, unreachable) {
        const lost = unreachable ? `&unreachable=${encodeURIComponent(unreachable)}` : "";
        return this.call("GET", `/route?userId=${encodeURIComponent(userId)}${lost}`);
    }
    /** Where each user connects, in order (`POST /route`, 500 per call). */
    async routes(userIds) {
        return this.batched(userIds, async (ids) => (await this.call("POST", "/route", { userIds: ids })).routes);
    }
    /**
     * The presence of each user, in order (`POST /presence`): the server API,
     * on the admin listener or with the API key. For app backends; clients
     * learn others' presence through their session's subscriptions.
     */
    async status(userIds) {
        return this.batched(userIds, async (ids) => (await this.call("POST", "/presence", { userIds: ids })).users);
    }
    /** `call` on the IDs `BATCH` at a time, the answers in order. */
    async batched(userIds, call) {
        const out = [];
        for (let i = 0; i < userIds.length; i += BATCH)
            out.push(...(await call(userIds.slice(i, i + BATCH))));
        return out;
    }
    /** Connects as `userId` and keeps the connection up until `Session.close`. */
    connect(userId, options) {
        return new Session(this, userId, options, this.options.WebSocket);
    }
    async call(method, path, body) {
        const f = this.options.fetch ?? globalThis.fetch;
        const headers = {};
        if (body !== undefined)
            headers["content-type"] = "application/json";
        if (this.options.apiKey)
            headers["authorization"] = `Bearer ${this.options.apiKey}`;
        const abort = new AbortController();
        const timer = setTimeout(() => abort.abort(), this.options.timeoutMs ?? 5000);
        let res;
        try {
            res = await f(this.coordinator + path, {
                method,
                headers,
                body: body === undefined ? undefined : JSON.stringify(body),
                signal: abort.signal,
            });
        }
        catch (e) {
            throw new PresenceError("network", `${method} ${path}: ${e.message ?? e}`);
        }
        finally {
            clearTimeout(timer);
        }
        const text = await res.text();
        let json = undefined;
        try {
            json = text ? JSON.parse(text) : undefined;
        }
        catch {
            // Not JSON: reported below with the status.
        }
        if (!res.ok) {
            throw new PresenceError(json?.code ?? "unknown", json?.error ?? `HTTP ${res.status}`, res.status);
        }
        return json;
    }
}
const TIMEOUT = Symbol("timeout");
/** One WebSocket, read as a queue of frames. */
class Link {
    url;
    ws;
    frames = [];
    wake = null;
    ended = false;
    constructor(ws, url) {
        this.ws = ws;
        this.url = url;
        ws.onmessage = (e) => {
            let msg;
            try {
                msg = JSON.parse(typeof e.data === "string" ? e.data : String(e.data));
            }
            catch {
                return; // Not JSON: not a frame of this protocol.
            }
            this.push({ msg });
        };
        ws.onclose = (e) => this.push({ closed: true, code: e.code, reason: e.reason });
        ws.onerror = () => {
            // A close event follows.
        };
    }
    /** Opens a socket to `url` within `timeoutMs`. */
    static open(WS, url, timeoutMs) {
        return new Promise((resolve, reject) => {
            let ws;
            try {
                ws = new WS(url);
            }
            catch (e) {
                reject(new Error(`${url}: ${e.message}`));
                return;
            }
            const timer = setTimeout(() => {
                ws.close();
                reject(new Error(`${url} did not open in time`));
            }, timeoutMs);
            ws.onopen = () => {
                clearTimeout(timer);
                resolve(new Link(ws, url));
            };
            ws.onclose = (e) => {
                clearTimeout(timer);
                reject(new Error(`${url} closed ${e.code} before opening`));
            };
            ws.onerror = () => {
                // The close event says it.
            };
        });
    }
    push(f) {
        if (this.ended)
            return;
        if ("closed" in f)
            this.ended = true;
        this.frames.push(f);
        this.wake?.();
    }
    send(m) {
        if (this.ws.readyState === 1)
            this.ws.send(JSON.stringify(m));
    }
    /** The next frame, or `TIMEOUT` after `ms`. */
    async next(ms) {
        if (this.frames.length === 0) {
            await new Promise((resolve) => {
                const timer = setTimeout(() => {
                    this.wake = null;
                    resolve();
                }, Math.max(0, ms));
                this.wake = () => {
                    clearTimeout(timer);
                    this.wake = null;
                    resolve();
                };
            });
        }
        return this.frames.shift() ?? TIMEOUT;
    }
    /** Closes the socket; the reader gets a closed frame. */
    close(code = 1000) {
        try {
            this.ws.close(code);
        }
        catch {
            // Already closing.
        }
        this.push({ closed: true, code, reason: "closed by the client" });
    }
}
/** The payload's `exp` of a JWT, in ms, if it can be read. */
function tokenExpiry(token) {
    try {
        const part = token.split(".")[1] ?? "";
        const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
        const exp = JSON.parse(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4))).exp;
        return typeof exp === "number" ? exp * 1000 : undefined;
    }
    catch {
        return undefined;
    }
}
/**
 * A live session: subscribe, set the user's status and activity, and listen
 * to `SessionEvent`s with `on`. Subscriptions, the status and idleness are
 * kept across reconnects.
 */
export class Session {
    userId;
    client;
    options;
    WS;
    backoff;
    handlers = new Map();
    subs = new Set();
    trusted = new Set();
    link = null;
    token = null;
    /** When to send a fresh token (80% of the current one's remaining life), ms. */
    refreshAt = Infinity;
    idle = false;
    unsentStatus = null;
    closing = false;
    stopSleep = null;
    done;
    /** The node the session is on, once welcomed. */
    nodeId = null;
    /** The node the coordinator last routed this session to. */
    routedNode = null;
    /** A node lost or unreachable since the last `welcome`: named on the next route. */
    unreachable = null;
    /** Use `PresenceClient.connect`. */
    constructor(client, userId, options, WS) {
        this.client = client;
        this.userId = userId;
        this.options = options;
        const ws = WS ?? globalThis.WebSocket;
        if (!ws)
            throw new PresenceError("bad_request", "no WebSocket: pass one in ClientOptions.WebSocket");
        this.WS = ws;
        this.backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
        if (options.url)
            this.trusted.add(options.url);
        // Start once the caller had a chance to add handlers.
        this.done = Promise.resolve().then(() => this.run());
    }
    /** Calls `handler` with every event of `type`; returns a function that stops it. */
    on(type, handler) {
        let set = this.handlers.get(type);
        if (!set)
            this.handlers.set(type, (set = new Set()));
        set.add(handler);
        return () => set.delete(handler);
    }
    /** Starts receiving `status` for these users. */
    subscribe(userIds) {
        const fresh = userIds.filter((u) => !this.subs.has(u));
        fresh.forEach((u) => this.subs.add(u));
        for (let i = 0; i < fresh.length; i += BATCH) {
            this.link?.send({ type: "subscribe", userIds: fresh.slice(i, i + BATCH) });
        }
    }
    /** Stops receiving `status` for these users. */
    unsubscribe(userIds) {
        const gone = userIds.filter((u) => this.subs.delete(u));
        if (gone.length > 0)
            this.link?.send({ type: "unsubscribe", userIds: gone });
    }
    /**
     * Sets the user's availability (`available` without text clears it) and
     * text (at most 128 characters), for `expiresInMs` or until set again.
     * Sent now, or on the next connection when disconnected.
     */
    setStatus(availability, text, expiresInMs) {
        const m = { type: "setStatus", availability, text, expiresInMs };
        if (this.link)
            this.link.send(m);
        else
            this.unsentStatus = m;
    }
    /** Says whether this connection is idle (no user input for a while); kept across reconnects. */
    setIdle(idle) {
        if (idle === this.idle)
            return;
        this.idle = idle;
        this.link?.send({ type: "activity", idle });
    }
    /** Disconnects and ends the session; resolves once it has. */
    async close() {
        this.closing = true;
        this.stopSleep?.();
        this.link?.close(1000);
        await this.done;
    }
    emit(e) {
        for (const h of this.handlers.get(e.type) ?? []) {
            try {
                h(e);
            }
            catch (err) {
                // A handler's failure is the app's; the session goes on.
                console.error("presence-client: an event handler threw", err);
            }
        }
    }
    /** Waits `ms`, or less if the session closes; whether it is still open. */
    sleep(ms) {
        return new Promise((resolve) => {
            const timer = setTimeout(() => {
                this.stopSleep = null;
                resolve(!this.closing);
            }, ms);
            this.stopSleep = () => {
                clearTimeout(timer);
                this.stopSleep = null;
                resolve(false);
            };
        });
    }
    async getToken(expired) {
        const t = this.options.token;
        return typeof t === "string" ? t : await t(expired);
    }
    async route() {
        const r = await this.client.route(this.userId, this.unreachable ?? undefined);
        this.routedNode = r.nodeId;
        if (!r.url)
            throw new PresenceError("unavailable", "no node owns the user's vnode right now");
        this.trusted.add(r.url);
        return r.url;
    }
    /** One attempt: route (unless a trusted URL is given), open, authenticate, read up to `welcome`. */
    async attempt(url, expired) {
        try {
            if (expired || this.token === null)
                this.token = await this.getToken(expired);
            const fromCoordinator = !(url !== undefined && this.trusted.has(url));
            const target = fromCoordinator ? await this.route() : url;
            const deadline = Date.now() + (this.options.connectTimeoutMs ?? 5000);
            let link;
            try {
                link = await Link.open(this.WS, target, deadline - Date.now());
            }
            catch (e) {
                // The socket never opened: the node is named on the next route.
                if (fromCoordinator)
                    this.unreachable = this.routedNode;
                throw e;
            }
            link.send({ type: "auth", token: this.token, device: this.options.device });
            let redirect = null;
            let expiredSaid = false;
            let said = "";
            for (;;) {
                const f = await link.next(deadline - Date.now());
                if (f === TIMEOUT) {
                    link.close();
                    return { kind: "other", cause: "no welcome in time" };
                }
                if ("closed" in f) {
                    if (redirect)
                        return { kind: "redirect", url: redirect };
                    if (expiredSaid)
                        return { kind: "expired" };
                    return { kind: "other", cause: `closed ${f.code} ${f.reason || said}`.trim() };
                }
                const m = f.msg;
                if (m.type === "welcome") {
                    this.expiresAt(m.tokenExpiresAt);
                    this.nodeId = m.nodeId;
                    this.unreachable = null;
                    this.link = link;
                    this.emit({ type: "welcome", nodeId: m.nodeId, connectionId: m.connectionId, epoch: m.epoch, connections: m.connections });
                    break;
                }
                else if (m.type === "redirect") {
                    redirect = m.url;
                }
                else if (m.type === "error") {
                    if (m.code === "token_expired")
                        expiredSaid = true;
                    said = `${m.code}: ${m.message}`;
                }
            }
            // A new connection starts active, subscribed to nothing.
            if (this.idle)
                link.send({ type: "activity", idle: true });
            if (this.unsentStatus) {
                link.send(this.unsentStatus);
                this.unsentStatus = null;
            }
            const ids = [...this.subs];
            for (let i = 0; i < ids.length; i += BATCH)
                link.send({ type: "subscribe", userIds: ids.slice(i, i + BATCH) });
            return link;
        }
        catch (e) {
            return { kind: "other", cause: e.message ?? String(e) };
        }
    }
    /** Connects, retrying as needed; `null` when the session should end. */
    async establish(url) {
        let failures = 0;
        let expired = false;
        let hops = 0;
        let next = url;
        while (!this.closing) {
            const got = await this.attempt(next, expired);
            next = undefined;
            if (got instanceof Link) {
                if (this.closing)
                    got.close();
                return this.closing ? null : got;
            }
            if (got.kind === "redirect" && hops < MAX_REDIRECTS) {
                // Followed a few hops, each a little later; a node's word is checked
                // with the coordinator unless the coordinator named that URL itself.
                hops += 1;
                if (!(await this.sleep(REDIRECT_PAUSE_MS * hops)))
                    return null;
                next = got.url;
                continue;
            }
            if (got.kind === "expired" && !expired) {
                expired = true;
                this.emit({ type: "reconnecting", reason: "token_expired", attempt: failures, delayMs: 0 });
                continue;
            }
            hops = 0;
            expired = false;
            failures += 1;
            const cause = got.kind === "other" ? got.cause : got.kind === "redirect" ? "too many redirects" : "token still expired";
            if (this.backoff.maxAttempts !== undefined && failures >= this.backoff.maxAttempts) {
                this.emit({ type: "error", code: "gave_up", message: `after ${failures} attempts: ${cause}` });
                return null;
            }
            const delayMs = backoffDelay(this.backoff, failures);
            this.emit({ type: "reconnecting", reason: "dropped", cause, attempt: failures, delayMs });
            if (!(await this.sleep(delayMs)))
                return null;
        }
        return null;
    }
    /** After a drop: announce it, wait the first backoff step, then establish again. */
    async reconnectAfter(cause) {
        this.link = null;
        this.unreachable = this.nodeId;
        const delayMs = backoffDelay(this.backoff, 1);
        this.emit({ type: "reconnecting", reason: "dropped", cause, attempt: 0, delayMs });
        if (!(await this.sleep(delayMs)))
            return null;
        return this.establish();
    }
    async run() {
        let link = await this.establish(this.options.url);
        let heard = Date.now();
        let pinged = false;
        const interval = this.options.pingIntervalMs ?? 5000;
        const timeout = this.options.pingTimeoutMs ?? 3000;
        while (link && !this.closing) {
            const checkAt = heard + interval + (pinged ? timeout : 0);
            // What the wait is for is decided now: a timer may fire a little
            // early, and a refresh taken for a silent node would reconnect.
            const forRefresh = this.refreshAt <= checkAt;
            const f = await link.next(Math.min(checkAt, this.refreshAt) - Date.now());
            if (this.closing)
                break;
            if (f === TIMEOUT) {
                if (forRefresh) {
                    await this.refresh(link);
                }
                else if (!pinged) {
                    pinged = true;
                    link.send({ type: "ping" });
                }
                else {
                    link.close();
                    link = await this.reconnectAfter(`no answer from the node for ${Date.now() - heard} ms`);
                    [heard, pinged] = [Date.now(), false];
                }
                continue;
            }
            [heard, pinged] = [Date.now(), false];
            if ("closed" in f) {
                link = await this.reconnectAfter(`closed ${f.code} ${f.reason}`.trim());
                [heard, pinged] = [Date.now(), false];
                continue;
            }
            const m = f.msg;
            switch (m.type) {
                case "count":
                    this.emit({ type: "count", connections: m.connections });
                    break;
                case "status":
                    this.emit(m);
                    break;
                case "statuses":
                    for (const s of m.statuses ?? [])
                        this.emit(s);
                    break;
                case "error":
                    this.emit({ type: "error", code: m.code, message: m.message });
                    break;
                case "reconnect": {
                    // The new connection first; only then let the old one go.
                    this.emit({ type: "reconnecting", reason: "handoff", url: m.url, attempt: 0, delayMs: 0 });
                    const old = link;
                    if (m.url)
                        this.trusted.add(m.url);
                    link = await this.establish(m.url || undefined);
                    old.close();
                    [heard, pinged] = [Date.now(), false];
                    break;
                }
                default:
                    break; // welcome again, pong, types of newer servers
            }
        }
        this.link?.close();
        this.link = null;
        this.emit({ type: "closed" });
    }
    /** The connection's token runs out at `at` (ms): refresh at 80% of what is left. */
    expiresAt(at) {
        this.refreshAt = at === undefined ? Infinity : Date.now() + Math.floor(((at - Date.now()) * 4) / 5);
    }
    /** Sends a fresh token over the live connection; on failure, tries again soon. */
    async refresh(link) {
        try {
            const token = await this.getToken(true);
            this.token = token;
            this.expiresAt(tokenExpiry(token));
            link.send({ type: "auth", token });
        }
        catch (e) {
            this.refreshAt = Date.now() + 1250;
            this.emit({ type: "error", code: "unauthorized", message: `token refresh failed: ${e.message ?? e}` });
        }
    }
}
