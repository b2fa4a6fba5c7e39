// A minimal Better Auth server for examples/docker-compose.yml: e-mail and password sign-in,
// sessions in Postgres. It runs Better Auth's migrations (creating the "user", "session",
// "account" and "verification" tables), then serves Better Auth at /api/auth and a small sign-in
// page at /login (the gateway's GATEWAY_LOGIN_URL).
//   DATABASE_URL             the Postgres the gateway reads too
//   BETTER_AUTH_SECRET_FILE  a file holding the secret (a compose or Kubernetes secret), or
//   BETTER_AUTH_SECRET       the secret itself
//   BETTER_AUTH_URL          this server's public base URL, e.g. http://localhost:3000
//   APP_URL                  the protected app's URL: where /login returns to (rd must start with it)
//   PORT                     default 3000
import http from "node:http";
import { readFileSync } from "node:fs";
import pg from "pg";
import { betterAuth } from "better-auth";
import { getMigrations } from "better-auth/db/migration";
import { toNodeHandler } from "better-auth/node";

const secretFile = process.env.BETTER_AUTH_SECRET_FILE;
const options = {
  database: new pg.Pool({ connectionString: process.env.DATABASE_URL }),
  secret: secretFile ? readFileSync(secretFile, "utf8").trim() : process.env.BETTER_AUTH_SECRET,
  baseURL: process.env.BETTER_AUTH_URL,
  emailAndPassword: { enabled: true },
};
const auth = betterAuth(options);
const { runMigrations } = await getMigrations(options);
await runMigrations();

const appUrl = process.env.APP_URL || "http://localhost:8081/";
const page = readFileSync(new URL("./login.html", import.meta.url), "utf8").replaceAll("{{APP_URL}}", appUrl);
const handler = toNodeHandler(auth);
const server = http.createServer((req, res) => {
  const path = new URL(req.url, "http://localhost").pathname;
  if (req.method === "GET" && path === "/login") {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" });
    res.end(page);
    return;
  }
  handler(req, res);
});
server.listen(Number(process.env.PORT || 3000), "0.0.0.0", () => console.log("ready"));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
