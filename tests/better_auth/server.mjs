// The real Better Auth, as the gateway's tests run it: one server on the test database.
// Configured from the environment: DATABASE_URL, BETTER_AUTH_SECRET, PORT, BASE_URL,
// PLUGINS (comma-separated: bearer, admin). It migrates its own schema, then prints "ready".
import http from "node:http";
import pg from "pg";
import { betterAuth } from "better-auth";
import { getMigrations } from "better-auth/db/migration";
import { toNodeHandler } from "better-auth/node";
import { bearer, admin } from "better-auth/plugins";

const plugins = (process.env.PLUGINS || "").split(",").filter(Boolean).map((name) => {
  if (name === "bearer") return bearer();
  if (name === "admin") return admin();
  throw new Error(`unknown plugin ${name}`);
});

const options = {
  database: new pg.Pool({ connectionString: process.env.DATABASE_URL }),
  secret: process.env.BETTER_AUTH_SECRET,
  baseURL: process.env.BASE_URL,
  emailAndPassword: { enabled: true },
  plugins,
  logger: { level: "error" },
};
const auth = betterAuth(options);
const { runMigrations } = await getMigrations(options);
await runMigrations();

const server = http.createServer(toNodeHandler(auth));
server.listen(Number(process.env.PORT), "127.0.0.1", () => console.log("ready"));
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => server.close(() => process.exit(0)));
