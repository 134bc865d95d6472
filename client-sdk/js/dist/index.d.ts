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
export declare class PresenceError extends Error {
    /** Machine-readable code. */
    readonly code: string;
    /** The HTTP status, for API errors. */
    readonly status?: number;
    constructor(code: string, message: string, status?: number);
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
export declare const DEFAULT_BACKOFF: Backoff;
/**
 * The delay before attempt `attempt` (1 for the first retry): half of the
 * capped exponential step, plus a random part of the other half, so that
 * clients dropped together do not come back together.
 */
export declare function backoffDelay(b: Backoff, attempt: number, random?: () => number): number;
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
export type SessionEvent = {
    type: "welcome";
    nodeId: string;
    connectionId: string;
    epoch: number;
    connections: number;
} | {
    type: "count";
    connections: number;
} | ({
    type: "status";
} & PresenceView) | {
    type: "reconnecting";
    reason: ReconnectReason;
    url?: string;
    cause?: string;
    attempt: number;
    delayMs: number;
} | {
    type: "error";
    code: string;
    message: string;
} | {
    type: "closed";
};
/** The event of one type. */
export type EventOf<K extends SessionEvent["type"]> = Extract<SessionEvent, {
    type: K;
}>;
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
/** A client of one presence cluster, through its coordinator. */
export declare class PresenceClient {
    readonly coordinator: string;
    private readonly options;
    /** A client of the cluster whose coordinator is at `coordinator` (`http://host:port`). */
    constructor(coordinator: string, options?: ClientOptions);
    /**
     * Where `userId` connects (`GET /route`). With `unreachable`, the node the
     * caller lost or could not reach: while that node still owns the user and
     * its address refuses connections, the coordinator answers once the user
     * has moved (within a few seconds), so a reconnect need not guess when.
     */
    route(userId: string, unreachable?: string): Promise<Route>;
    /** Where each user connects, in order (`POST /route`, 500 per call). */
    routes(userIds: string[]): Promise<Route[]>;
    /**
     * The presence of each user, in order (`POST /presence`): the server API,
     * on the admin listener or with the API key. For app backends; clients
     * learn others' presence through their session's subscriptions.
     */
    status(userIds: string[]): Promise<PresenceView[]>;
    /** `call` on the IDs `BATCH` at a time, the answers in order. */
    private batched;
    /** Connects as `userId` and keeps the connection up until `Session.close`. */
    connect(userId: string, options: ConnectOptions): Session;
    private call;
}
/**
 * A live session: subscribe, set the user's status and activity, and listen
 * to `SessionEvent`s with `on`. Subscriptions, the status and idleness are
 * kept across reconnects.
 */
export declare class Session {
    readonly userId: string;
    private readonly client;
    private readonly options;
    private readonly WS;
    private readonly backoff;
    private readonly handlers;
    private readonly subs;
    private readonly trusted;
    private link;
    private token;
    /** When to send a fresh token (80% of the current one's remaining life), ms. */
    private refreshAt;
    private idle;
    private unsentStatus;
    private closing;
    private stopSleep;
    private readonly done;
    /** The node the session is on, once welcomed. */
    nodeId: string | null;
    /** The node the coordinator last routed this session to. */
    private routedNode;
    /** A node lost or unreachable since the last `welcome`: named on the next route. */
    private unreachable;
    /** Use `PresenceClient.connect`. */
    constructor(client: PresenceClient, userId: string, options: ConnectOptions, WS?: WebSocketConstructor);
    /** Calls `handler` with every event of `type`; returns a function that stops it. */
    on<K extends SessionEvent["type"]>(type: K, handler: (e: EventOf<K>) => void): () => void;
    /** Starts receiving `status` for these users. */
    subscribe(userIds: string[]): void;
    /** Stops receiving `status` for these users. */
    unsubscribe(userIds: string[]): void;
    /**
     * Sets the user's availability (`available` without text clears it) and
     * text (at most 128 characters), for `expiresInMs` or until set again.
     * Sent now, or on the next connection when disconnected.
     */
    setStatus(availability: Exclude<Availability, "other">, text?: string, expiresInMs?: number): void;
    /** Says whether this connection is idle (no user input for a while); kept across reconnects. */
    setIdle(idle: boolean): void;
    /** Disconnects and ends the session; resolves once it has. */
    close(): Promise<void>;
    private emit;
    /** Waits `ms`, or less if the session closes; whether it is still open. */
    private sleep;
    private getToken;
    private route;
    /** One attempt: route (unless a trusted URL is given), open, authenticate, read up to `welcome`. */
    private attempt;
    /** Connects, retrying as needed; `null` when the session should end. */
    private establish;
    /** After a drop: announce it, wait the first backoff step, then establish again. */
    private reconnectAfter;
    private run;
    /** The connection's token runs out at `at` (ms): refresh at 80% of what is left. */
    private expiresAt;
    /** Sends a fresh token over the live connection; on failure, tries again soon. */
    private refresh;
}
