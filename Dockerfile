# syntax=docker/dockerfile:1
# claude-agent-http and the pinned Claude Code CLI (README: Docker).
#
#   docker build -t claude-agent-http .                                   # root: strict isolation when run privileged
#   docker build --target runtime-nonroot -t claude-agent-http:nonroot .  # uid 10001, isolation profile none
#
# The build steps are docker/build.sh, which CI runs outside Docker and checks. Base images are
# pinned by tag here; pin them by digest as well (image:tag@sha256:...) in the builds you deploy, so a
# re-pushed tag cannot change what you ship. No secret goes into the image: keys come from the
# environment when the container runs (see .env.example and compose.yaml).

FROM rust:1.95.0-bookworm AS builder
# npm (Debian's) installs the CLI; the CLI itself is a native binary and needs no Node.js to run.
RUN apt-get update \
    && apt-get install -y --no-install-recommends nodejs npm \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The CLI first, in a layer of its own: it changes only when the pin in src/agent/cli.rs does.
COPY docker/build.sh docker/build.sh
COPY src/agent/cli.rs src/agent/cli.rs
RUN --mount=type=cache,target=/root/.npm \
    bash docker/build.sh --cli-only /opt/claude-agent-http
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    bash docker/build.sh /opt/claude-agent-http release

FROM debian:bookworm-slim AS runtime-base
# What the CLI and its tools use at run time (isolation study, section 4.2): bash and coreutils
# (already in the base image), git, ps (procps), and CA certificates for TLS to the model API (and
# to PostgreSQL with sslmode=verify-full). ripgrep is built into the CLI.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates git procps \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -m 0700 /data \
    && mkdir -m 0755 /etc/claude-agent-http
# BuildKit keeps npm's hard link between the two names of the CLI's binary, so it is stored once
# (the legacy builder would store it twice).
COPY --from=builder /opt/claude-agent-http /opt/claude-agent-http
# Listening on every interface means authentication on (the service refuses to start otherwise): the
# first admin key comes from the CLAUDE_AGENT_AUTH__ADMIN_KEY secret at run time, or from
# `claude-agent-http keys create --admin` run in the container.
ENV PATH=/opt/claude-agent-http/bin:$PATH \
    LANG=C.UTF-8 \
    CLAUDE_AGENT_DATA_DIR=/data \
    CLAUDE_AGENT_CLI_PATH=/opt/claude-agent-http/cli/node_modules/.bin/claude \
    CLAUDE_AGENT_API_HOST=0.0.0.0 \
    CLAUDE_AGENT_API_PORT=8000 \
    CLAUDE_AGENT_AUTH__MODE=on
# A config file mounted at /etc/claude-agent-http/config.yaml is read by the server and by the
# healthcheck alike (both read ./config.yaml).
WORKDIR /etc/claude-agent-http
EXPOSE 8000
# GET /health answers 200 "healthy" while the store answers; no credential needed.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["claude-agent-http", "healthcheck"]
ENTRYPOINT ["claude-agent-http"]
CMD ["serve"]

# One user, or users who trust each other, on a host that gives no privileges: the service runs as
# uid 10001 and agents run unisolated as that same uid (README: Security).
FROM runtime-base AS runtime-nonroot
RUN groupadd --system --gid 10001 claude-agent \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin claude-agent \
    && chown 10001:10001 /data
ENV CLAUDE_AGENT_ISOLATION__PROFILE=none
USER 10001:10001
VOLUME /data

# The default target: root in the container, which the strict profile needs (each user's agents in a
# sandbox of their own, as a uid of their own). isolation.profile auto takes strict where the container
# has the privileges (README: Docker), else none, loudly; set CLAUDE_AGENT_ISOLATION__PROFILE=strict
# to refuse to start without it.
FROM runtime-base AS runtime
VOLUME /data
