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

/** What a user says about themselves (`"other"`: a newer server's value). */
export type Availability = "available" | "away" | "busy" | "invisible" | "other";

/** One user's presence, as `status` messages and `/presence` carry it. */
export interface PresenceView {
  /** The user. */
  userId: string;
  /** `connections > 0` (an invisible user is offline to everyone but themselves). */
  online: boolean;
  /** Live connections in the cluster. */
  connections: number;
  /** Last disconnect (ms since the Unix epoch), now while online, `null` if never seen. */
  lastSeen: number | null;
  /** Why the user went offline, when known (`closed`, `timeout`, `node_lost`, ...). */
  reason?: string;
  /** Live connections per device (`web`, `mobile`, ...); absent while offline. */
  devices?: Record<string, number>;
  /** Online with every connection idle. */
  idle?: boolean;
  /** Since when idle (ms), while idle. */
  idleSince?: number;
  /** What the user set; `available` when nothing (or it expired). */
  availability: Availability;
  /** The user's status text. */
  statusText?: string;
  /** When availability and text lapse (ms). */
  statusExpiresAt?: number;
}

/** Where a user connects, as `/route` answers it. */
export interface Route {
  userId: string;
  vnode: number;
  /** `null` when no node owns the vnode right now. */
  nodeId: string | null;
  url: string | null;
  epoch: number;
  /** The coordinator could not refresh its table from the store. */
  stale?: boolean;
}

/** An error with the server's code (`docs/protocol.md`, "Error codes"), or `gave_up`, `network`, `closed`. */
export class PresenceError extends Error {
  /** Machine-readable code. */
  readonly code: string;
  /** The HTTP status, for API errors. */
  readonly status?: number;

  constructor(code: string, message: string, status?: number) {
    super(message);
    this.name = "PresenceError";
    this.code = code;
    this.status = status;
  }
}

/** Reconnect timing: exponential, capped, with full jitter. */
export interface Backoff {
  /** The first delay's cap, ms (default 250). */
  initialMs: number;
  /** The largest delay, ms (default 10,000). */
  maxMs: number;
  /** Failed attempts in a row before giving up (`gave_up`); unlimited when absent. */
  maxAttempts?: number;
}

/** The default backoff. */
export const DEFAULT_BACKOFF: Backoff = { initialMs: 250, maxMs: 10_000 };

/**
 * The delay before attempt `attempt` (1 for the first retry): half of the
 * capped exponential step, plus a random part of the other half, so that
 * clients dropped together do not come back together.
 */
export function backoffDelay(b: Backoff, attempt: number, random: () => number = Math.random): number {
  const step = Math.min(b.initialMs * 2 ** Math.min(Math.max(attempt - 1, 0), 20), b.maxMs);
  return step / 2 + (step / 2) * random();
}

/**
 * Where tokens come from: one token, or a callback told whether a fresh one
 * is needed (`true`: the server said the last one expired, or it is about to).
 */
export type TokenSource = string | ((expired: boolean) => string | Promise<string>);

/** The `WebSocket` constructor to use (the global one by default). */
export type WebSocketConstructor = new (url: string) => WebSocket;

/** Options of `PresenceClient.connect`. */
export interface ConnectOptions {
  /** Tokens for the user. */
  token: TokenSource;
  /** The device class this session declares: `web`, `mobile`, `desktop` or a short label. */
  device?: string;
  /** Connect here first instead of asking the coordinator (it may redirect). */
  url?: string;
  /** Reconnect timing. */
  backoff?: Partial<Backoff>;
  /** After this long without a frame from the node, the session sends a `ping` (default 5,000 ms)... */
  pingIntervalMs?: number;
  /** ...and when nothing arrives for this long after, it reconnects (default 3,000 ms). */
  pingTimeoutMs?: number;
  /** Longest wait for one attempt, from the socket to `welcome` (default 5,000 ms). */
  connectTimeoutMs?: number;
}

/** Why the session is reconnecting. */
export type ReconnectReason = "handoff" | "dropped" | "token_expired";

/** What a session emits. */
export type SessionEvent =
  | { type: "welcome"; nodeId: string; connectionId: string; epoch: number; connections: number }
  | { type: "count"; connections: number }
  | ({ type: "status" } & PresenceView)
  | { type: "reconnecting"; reason: ReconnectReason; url?: string; cause?: string; attempt: number; delayMs: number }
  | { type: "error"; code: string; message: string }
  | { type: "closed" };

/** The event of one type. */
export type EventOf<K extends SessionEvent["type"]> = Extract<SessionEvent, { type: K }>;

/** Options of a `PresenceClient`. */
export interface ClientOptions {
  /** `fetch` to use (the global one by default). */
  fetch?: typeof fetch;
  /** `WebSocket` to use (the global one by default): Node.js before 22, or a custom one. */
  WebSocket?: WebSocketConstructor;
  /** The admin API key, for `status` (server-side use only: never ship it to browsers). */
  apiKey?: string;
  /** Longest wait for one HTTP call, ms (default 5,000). */
  timeoutMs?: number;
}

/** Most user IDs per `subscribe` message and per batch call. */
const BATCH = 500;
/** Redirects followed in a row before the chain counts as a failed attempt. */
const MAX_REDIRECTS = 5;
/** Pause before following the n-th redirect of a chain (n times this). */
const REDIRECT_PAUSE_MS = 50;

/** A client of one presence cluster, through its coordinator. */
export class PresenceClient {
  readonly coordinator: string;
  private readonly options: ClientOptions;

  /** A client of the cluster whose coordinator is at `coordinator` (`http://host:port`). */
  constructor(coordinator: string, options: ClientOptions = {}) {
    this.coordinator = coordinator.replace(/\/+$/, "");
    this.options = options;
  }

  /**
   * Where `userId` connects (`GET /route`). With `unreachable`, the node the
   * caller lost or could not reach: while that node still owns the user and
   * its address refuses connections, the coordinator answers once the user
   * has moved (within a few seconds), so a reconnect need not guess when.
   */
  async route(userId: string, unreachable?: string): Promise<Route> {
    const lost = unreachable ? `&unreachable=${encodeURIComponent(unreachable)}` : "";
    return this.call<Route>("GET", `/route?userId=${encodeURIComponent(userId)}${lost}`);
  }

  /** Where each user connects, in order (`POST /route`, 500 per call). */
  async routes(userIds: string[]): Promise<Route[]> {
    return this.batched(userIds, async (ids) => (await this.call<{ routes: Route[] }>("POST", "/route", { userIds: ids })).routes);
  }

  /**
   * The presence of each user, in order (`POST /presence`): the server API,
   * on the admin listener or with the API key. For app backends; clients
   * learn others' presence through their session's subscriptions.
   */
  async status(userIds: string[]): Promise<PresenceView[]> {
    return this.batched(userIds, async (ids) => (await this.call<{ users: PresenceView[] }>("POST", "/presence", { userIds: ids })).users);
  }

  /** `call` on the IDs `BATCH` at a time, the answers in order. */
  private async batched<T>(userIds: string[], call: (ids: string[]) => Promise<T[]>): Promise<T[]> {
    const out: T[] = [];
    for (let i = 0; i < userIds.length; i += BATCH) out.push(...(await call(userIds.slice(i, i + BATCH))));
    return out;
  }

  /** Connects as `userId` and keeps the connection up until `Session.close`. */
  connect(userId: string, options: ConnectOptions): Session {
    return new Session(this, userId, options, this.options.WebSocket);
  }

  private async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const f = this.options.fetch ?? globalThis.fetch;
    const headers: Record<string, string> = {};
    if (body !== undefined) headers["content-type"] = "application/json";
    if (this.options.apiKey) headers["authorization"] = `Bearer ${this.options.apiKey}`;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), this.options.timeoutMs ?? 5000);
    let res: Response;
    try {
      res = await f(this.coordinator + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: abort.signal,
      });
    } catch (e) {
      throw new PresenceError("network", `${method} ${path}: ${(e as Error).message ?? e}`);
    } finally {
      clearTimeout(timer);
    }
    const text = await res.text();
    let json: any = undefined;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      // Not JSON: reported below with the status.
    }
    if (!res.ok) {
      throw new PresenceError(json?.code ?? "unknown", json?.error ?? `HTTP ${res.status}`, res.status);
    }
    return json as T;
  }
}

/** One frame from a link: a message, or the end of the socket. */
type Frame = { msg: any } | { closed: true; code: number; reason: string };
const TIMEOUT = Symbol("timeout");

/** One WebSocket, read as a queue of frames. */
class Link {
  readonly url: string;
  private readonly ws: WebSocket;
  private readonly frames: Frame[] = [];
  private wake: (() => void) | null = null;
  private ended = false;

  private constructor(ws: WebSocket, url: string) {
    this.ws = ws;
    this.url = url;
    ws.onmessage = (e: MessageEvent) => {
      let msg: any;
      try {
        msg = JSON.parse(typeof e.data === "string" ? e.data : String(e.data));
      } catch {
        return; // Not JSON: not a frame of this protocol.
      }
      this.push({ msg });
    };
    ws.onclose = (e: CloseEvent) => this.push({ closed: true, code: e.code, reason: e.reason });
    ws.onerror = () => {
      // A close event follows.
    };
  }

  /** Opens a socket to `url` within `timeoutMs`. */
  static open(WS: WebSocketConstructor, url: string, timeoutMs: number): Promise<Link> {
    return new Promise((resolve, reject) => {
      let ws: WebSocket;
      try {
        ws = new WS(url);
      } catch (e) {
        reject(new Error(`${url}: ${(e as Error).message}`));
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
      ws.onclose = (e: CloseEvent) => {
        clearTimeout(timer);
        reject(new Error(`${url} closed ${e.code} before opening`));
      };
      ws.onerror = () => {
        // The close event says it.
      };
    });
  }

  private push(f: Frame): void {
    if (this.ended) return;
    if ("closed" in f) this.ended = true;
    this.frames.push(f);
    this.wake?.();
  }

  send(m: unknown): void {
    if (this.ws.readyState === 1) this.ws.send(JSON.stringify(m));
  }

  /** The next frame, or `TIMEOUT` after `ms`. */
  async next(ms: number): Promise<Frame | typeof TIMEOUT> {
    if (this.frames.length === 0) {
      await new Promise<void>((resolve) => {
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
  close(code = 1000): void {
    try {
      this.ws.close(code);
    } catch {
      // Already closing.
    }
    this.push({ closed: true, code, reason: "closed by the client" });
  }
}

type Failure = { kind: "redirect"; url: string } | { kind: "expired" } | { kind: "other"; cause: string };

/** The payload's `exp` of a JWT, in ms, if it can be read. */
function tokenExpiry(token: string): number | undefined {
  try {
    const part = token.split(".")[1] ?? "";
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const exp = JSON.parse(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4))).exp;
    return typeof exp === "number" ? exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

/**
 * A live session: subscribe, set the user's status and activity, and listen
 * to `SessionEvent`s with `on`. Subscriptions, the status and idleness are
 * kept across reconnects.
 */
export class Session {
  readonly userId: string;
  private readonly client: PresenceClient;
  private readonly options: ConnectOptions;
  private readonly WS: WebSocketConstructor;
  private readonly backoff: Backoff;
  private readonly handlers = new Map<string, Set<(e: any) => void>>();
  private readonly subs = new Set<string>();
  private readonly trusted = new Set<string>();
  private link: Link | null = null;
  private token: string | null = null;
  /** When to send a fresh token (80% of the current one's remaining life), ms. */
  private refreshAt = Infinity;
  private idle = false;
  private unsentStatus: unknown = null;
  private closing = false;
  private stopSleep: (() => void) | null = null;
  private readonly done: Promise<void>;
  /** The node the session is on, once welcomed. */
  nodeId: string | null = null;
  /** The node the coordinator last routed this session to. */
  private routedNode: string | null = null;
  /** A node lost or unreachable since the last `welcome`: named on the next route. */
  private unreachable: string | null = null;

  /** Use `PresenceClient.connect`. */
  constructor(client: PresenceClient, userId: string, options: ConnectOptions, WS?: WebSocketConstructor) {
    this.client = client;
    this.userId = userId;
    this.options = options;
    const ws = WS ?? (globalThis as any).WebSocket;
    if (!ws) throw new PresenceError("bad_request", "no WebSocket: pass one in ClientOptions.WebSocket");
    this.WS = ws;
    this.backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    if (options.url) this.trusted.add(options.url);
    // Start once the caller had a chance to add handlers.
    this.done = Promise.resolve().then(() => this.run());
  }

  /** Calls `handler` with every event of `type`; returns a function that stops it. */
  on<K extends SessionEvent["type"]>(type: K, handler: (e: EventOf<K>) => void): () => void {
    let set = this.handlers.get(type);
    if (!set) this.handlers.set(type, (set = new Set()));
    set.add(handler as (e: any) => void);
    return () => set!.delete(handler as (e: any) => void);
  }

  /** Starts receiving `status` for these users. */
  subscribe(userIds: string[]): void {
    const fresh = userIds.filter((u) => !this.subs.has(u));
    fresh.forEach((u) => this.subs.add(u));
    for (let i = 0; i < fresh.length; i += BATCH) {
      this.link?.send({ type: "subscribe", userIds: fresh.slice(i, i + BATCH) });
    }
  }

  /** Stops receiving `status` for these users. */
  unsubscribe(userIds: string[]): void {
    const gone = userIds.filter((u) => this.subs.delete(u));
    if (gone.length > 0) this.link?.send({ type: "unsubscribe", userIds: gone });
  }

  /**
   * Sets the user's availability (`available` without text clears it) and
   * text (at most 128 characters), for `expiresInMs` or until set again.
   * Sent now, or on the next connection when disconnected.
   */
  setStatus(availability: Exclude<Availability, "other">, text?: string, expiresInMs?: number): void {
    const m = { type: "setStatus", availability, text, expiresInMs };
    if (this.link) this.link.send(m);
    else this.unsentStatus = m;
  }

  /** Says whether this connection is idle (no user input for a while); kept across reconnects. */
  setIdle(idle: boolean): void {
    if (idle === this.idle) return;
    this.idle = idle;
    this.link?.send({ type: "activity", idle });
  }

  /** Disconnects and ends the session; resolves once it has. */
  async close(): Promise<void> {
    this.closing = true;
    this.stopSleep?.();
    this.link?.close(1000);
    await this.done;
  }

  private emit(e: SessionEvent): void {
    for (const h of this.handlers.get(e.type) ?? []) {
      try {
        h(e);
      } catch (err) {
        // A handler's failure is the app's; the session goes on.
        console.error("presence-client: an event handler threw", err);
      }
    }
  }

  /** Waits `ms`, or less if the session closes; whether it is still open. */
  private sleep(ms: number): Promise<boolean> {
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

  private async getToken(expired: boolean): Promise<string> {
    const t = this.options.token;
    return typeof t === "string" ? t : await t(expired);
  }

  private async route(): Promise<string> {
    const r = await this.client.route(this.userId, this.unreachable ?? undefined);
    this.routedNode = r.nodeId;
    if (!r.url) throw new PresenceError("unavailable", "no node owns the user's vnode right now");
    this.trusted.add(r.url);
    return r.url;
  }

  /** One attempt: route (unless a trusted URL is given), open, authenticate, read up to `welcome`. */
  private async attempt(url: string | undefined, expired: boolean): Promise<Link | Failure> {
    try {
      if (expired || this.token === null) this.token = await this.getToken(expired);
      const fromCoordinator = !(url !== undefined && this.trusted.has(url));
      const target = fromCoordinator ? await this.route() : (url as string);
      const deadline = Date.now() + (this.options.connectTimeoutMs ?? 5000);
      let link: Link;
      try {
        link = await Link.open(this.WS, target, deadline - Date.now());
      } catch (e) {
        // The socket never opened: the node is named on the next route.
        if (fromCoordinator) this.unreachable = this.routedNode;
        throw e;
      }
      link.send({ type: "auth", token: this.token, device: this.options.device });
      let redirect: string | null = null;
      let expiredSaid = false;
      let said = "";
      for (;;) {
        const f = await link.next(deadline - Date.now());
        if (f === TIMEOUT) {
          link.close();
          return { kind: "other", cause: "no welcome in time" };
        }
        if ("closed" in f) {
          if (redirect) return { kind: "redirect", url: redirect };
          if (expiredSaid) return { kind: "expired" };
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
        } else if (m.type === "redirect") {
          redirect = m.url;
        } else if (m.type === "error") {
          if (m.code === "token_expired") expiredSaid = true;
          said = `${m.code}: ${m.message}`;
        }
      }
      // A new connection starts active, subscribed to nothing.
      if (this.idle) link.send({ type: "activity", idle: true });
      if (this.unsentStatus) {
        link.send(this.unsentStatus);
        this.unsentStatus = null;
      }
      const ids = [...this.subs];
      for (let i = 0; i < ids.length; i += BATCH) link.send({ type: "subscribe", userIds: ids.slice(i, i + BATCH) });
      return link;
    } catch (e) {
      return { kind: "other", cause: (e as Error).message ?? String(e) };
    }
  }

  /** Connects, retrying as needed; `null` when the session should end. */
  private async establish(url?: string): Promise<Link | null> {
    let failures = 0;
    let expired = false;
    let hops = 0;
    let next = url;
    while (!this.closing) {
      const got = await this.attempt(next, expired);
      next = undefined;
      if (got instanceof Link) {
        if (this.closing) got.close();
        return this.closing ? null : got;
      }
      if (got.kind === "redirect" && hops < MAX_REDIRECTS) {
        // Followed a few hops, each a little later; a node's word is checked
        // with the coordinator unless the coordinator named that URL itself.
        hops += 1;
        if (!(await this.sleep(REDIRECT_PAUSE_MS * hops))) return null;
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
      if (!(await this.sleep(delayMs))) return null;
    }
    return null;
  }

  /** After a drop: announce it, wait the first backoff step, then establish again. */
  private async reconnectAfter(cause: string): Promise<Link | null> {
    this.link = null;
    this.unreachable = this.nodeId;
    const delayMs = backoffDelay(this.backoff, 1);
    this.emit({ type: "reconnecting", reason: "dropped", cause, attempt: 0, delayMs });
    if (!(await this.sleep(delayMs))) return null;
    return this.establish();
  }

  private async run(): Promise<void> {
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
      if (this.closing) break;
      if (f === TIMEOUT) {
        if (forRefresh) {
          await this.refresh(link);
        } else if (!pinged) {
          pinged = true;
          link.send({ type: "ping" });
        } else {
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
          this.emit(m as SessionEvent);
          break;
        case "statuses":
          for (const s of m.statuses ?? []) this.emit(s as SessionEvent);
          break;
        case "error":
          this.emit({ type: "error", code: m.code, message: m.message });
          break;
        case "reconnect": {
          // The new connection first; only then let the old one go.
          this.emit({ type: "reconnecting", reason: "handoff", url: m.url, attempt: 0, delayMs: 0 });
          const old = link;
          if (m.url) this.trusted.add(m.url);
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
  private expiresAt(at: number | undefined): void {
    this.refreshAt = at === undefined ? Infinity : Date.now() + Math.floor(((at - Date.now()) * 4) / 5);
  }

  /** Sends a fresh token over the live connection; on failure, tries again soon. */
  private async refresh(link: Link): Promise<void> {
    try {
      const token = await this.getToken(true);
      this.token = token;
      this.expiresAt(tokenExpiry(token));
      link.send({ type: "auth", token });
    } catch (e) {
      this.refreshAt = Date.now() + 1250;
      this.emit({ type: "error", code: "unauthorized", message: `token refresh failed: ${(e as Error).message ?? e}` });
    }
  }
}
