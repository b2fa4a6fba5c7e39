// The real Better Auth, as the gateway's tests run it: one server on the test database.
// Configured from the environment: DATABASE_URL, BETTER_AUTH_SECRET (or Better Auth's own
// BETTER_AUTH_SECRETS), PORT, BASE_URL; PLUGINS: comma-separated names, or a JSON object of
// name -> options; OPTIONS: JSON merged into the options (advanced, session, user, ...);
// SECONDARY_STORAGE (see secondaryStorage below). It migrates its own schema, then prints
// "ready". The API key plugin (@better-auth/api-key) is the plugin "apiKey" (options as above).
import http from "node:http";
import pg from "pg";
import { betterAuth } from "better-auth";
import { getMigrations } from "better-auth/db/migration";
import { toNodeHandler } from "better-auth/node";
import {
  bearer, admin, organization, jwt, username, anonymous, phoneNumber, twoFactor, lastLoginMethod,
} from "better-auth/plugins";
import { redisStorage } from "@better-auth/redis-storage";
import { apiKey } from "@better-auth/api-key";
import { Redis } from "ioredis";

const factories = {
  bearer, admin, organization, jwt, username, anonymous, phoneNumber, twoFactor, lastLoginMethod, apiKey,
};
function plugin(name, pluginOptions) {
  if (!(name in factories)) throw new Error(`unknown plugin ${name}`);
  return factories[name](pluginOptions);
}
const spec = (process.env.PLUGINS || "").trim();
const plugins = spec.startsWith("{")
  ? Object.entries(JSON.parse(spec)).map(([name, o]) => plugin(name, o))
  : spec.split(",").filter(Boolean).map((name) => plugin(name));

// secondaryStorage's interface (get/set/delete), kept in this process.
function memoryStorage() {
  const values = new Map();
  return {
    get: async (key) => {
      const entry = values.get(key);
      if (!entry) return null;
      if (entry.until && entry.until < Date.now()) { values.delete(key); return null; }
      return entry.value;
    },
    set: async (key, value, ttl) => { values.set(key, { value, until: ttl ? Date.now() + ttl * 1000 : 0 }); },
    delete: async (key) => { values.delete(key); },
  };
}

// SECONDARY_STORAGE: "memory", or a redis:// URL (@better-auth/redis-storage, with the JSON
// string SECONDARY_STORAGE_PREFIX as its keyPrefix when set, else its default "better-auth:").
function secondaryStorage(spec) {
  if (!spec) return {};
  if (spec === "memory") return { secondaryStorage: memoryStorage() };
  const prefix = process.env.SECONDARY_STORAGE_PREFIX;
  const client = new Redis(spec);
  const config = prefix === undefined ? { client } : { client, keyPrefix: JSON.parse(prefix) };
  return { secondaryStorage: redisStorage(config) };
}

const options = {
  database: new pg.Pool({ connectionString: process.env.DATABASE_URL }),
  secret: process.env.BETTER_AUTH_SECRET || undefined, // else Better Auth reads BETTER_AUTH_SECRETS
  baseURL: process.env.BASE_URL,
  emailAndPassword: { enabled: true },
  plugins,
  logger: { level: "error" },
  ...secondaryStorage(process.env.SECONDARY_STORAGE || ""),
  ...JSON.parse(process.env.OPTIONS || "{}"),
};
const auth = betterAuth(options);
const { runMigrations } = await getMigrations(options);
await runMigrations();

// POST /test/verify-jwt (tests only; with the jwt plugin): the bearer plugin's reading of the
// Authorization header, then the jwt plugin's own server-side verifyJWT: {"payload": claims | null}.
const handler = toNodeHandler(auth);
async function verifyJwtRoute(req, res) {
  const header = req.headers.authorization || "";
  const token = header.slice(0, 7).toLowerCase() === "bearer " ? header.slice(7).trim() : "";
  const result = token && auth.api.verifyJWT ? await auth.api.verifyJWT({ body: { token } }) : { payload: null };
  res.writeHead(200, { "content-type": "application/json" });
  res.end(JSON.stringify({ payload: result.payload ?? null }));
}
// POST /test/api-key/<create|update|delete> (tests only; with the apiKey plugin): the plugin's
// server-side calls, which may set what a client may not (userId, remaining, refill, rate limit).
async function apiKeyRoute(req, res) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const body = JSON.parse(Buffer.concat(chunks).toString() || "{}");
  const call = { create: "createApiKey", update: "updateApiKey", delete: "deleteApiKey" }[req.url.split("/").pop()];
  // With headers the plugin takes the call for a client's (server-only properties refused).
  const headers = body.headers ? new Headers(body.headers) : undefined;
  delete body.headers;
  const result = await auth.api[call](headers ? { body, headers } : { body });
  res.writeHead(200, { "content-type": "application/json" });
  res.end(JSON.stringify(result ?? null));
}
function failed(res, error) {
  res.writeHead(500);
  res.end(String(error));
}
const server = http.createServer((req, res) =>
  req.url === "/test/verify-jwt"
    ? verifyJwtRoute(req, res).catch((e) => failed(res, e))
    : req.url.startsWith("/test/api-key/")
      ? apiKeyRoute(req, res).catch((e) => failed(res, e))
      : handler(req, res),
);
server.listen(Number(process.env.PORT), "127.0.0.1", () => console.log("ready"));
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => server.close(() => process.exit(0)));
