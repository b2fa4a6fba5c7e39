// The real Better Auth, as the gateway's tests run it: one server on the test database.
// Configured from the environment: DATABASE_URL, BETTER_AUTH_SECRET (or Better Auth's own
// BETTER_AUTH_SECRETS), PORT, BASE_URL; PLUGINS: comma-separated names, or a JSON object of
// name -> options; OPTIONS: JSON merged into the options (advanced, session, user, ...);
// SECONDARY_STORAGE=memory: an in-process secondaryStorage. It migrates its own schema, then
// prints "ready".
import http from "node:http";
import pg from "pg";
import { betterAuth } from "better-auth";
import { getMigrations } from "better-auth/db/migration";
import { toNodeHandler } from "better-auth/node";
import { bearer, admin, organization, jwt } from "better-auth/plugins";

const factories = { bearer, admin, organization, jwt };
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

const options = {
  database: new pg.Pool({ connectionString: process.env.DATABASE_URL }),
  secret: process.env.BETTER_AUTH_SECRET || undefined, // else Better Auth reads BETTER_AUTH_SECRETS
  baseURL: process.env.BASE_URL,
  emailAndPassword: { enabled: true },
  plugins,
  logger: { level: "error" },
  ...(process.env.SECONDARY_STORAGE === "memory" ? { secondaryStorage: memoryStorage() } : {}),
  ...JSON.parse(process.env.OPTIONS || "{}"),
};
const auth = betterAuth(options);
const { runMigrations } = await getMigrations(options);
await runMigrations();

const server = http.createServer(toNodeHandler(auth));
server.listen(Number(process.env.PORT), "127.0.0.1", () => console.log("ready"));
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => server.close(() => process.exit(0)));
