# asap-sidecar image: a static asap-caddy on scratch, run as uid 65532.
#
#   docker build -t asap-sidecar:v1.3.0 .
#   docker run -e ASAP_AGENT=urn:asap:agent:research -e ASAP_UPSTREAM=agent:9000 \
#     -v asap-data:/data -p 8080:8080 asap-sidecar:v1.3.0
#
# See docs/container.md. Containerfile.local builds the same runtime stage
# around a binary built on the host (no registry needed); the lines from
# the "runtime stage" marker to the end must stay identical in both files
# (scripts/container_check.sh and TestImageRuntimeStagesAreIdentical check it).

FROM golang:1.26 AS build
ARG VERSION=v1.3.0
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/asap-sidecar/asap-sidecar/caddymodule.Version=${VERSION}" \
      -o /out/asap-caddy ./cmd/asap-caddy
# The image's file system: passwd/group with the asap user, the config,
# CA certificates (webhooks, JWKS over https), and the writable dirs.
RUN mkdir -p /out/etc/ssl/certs /out/data /out/run/asap \
 && cp -r container/etc/. /out/etc/ \
 && cp /etc/ssl/certs/ca-certificates.crt /out/etc/ssl/certs/ca-certificates.crt

# --- runtime stage: keep identical in Dockerfile and Containerfile.local ---
FROM scratch
COPY --from=build /out/etc/ /etc/
COPY --from=build /out/asap-caddy /asap-caddy
# /data: Badger (/data/asap), Caddy's data and autosaved config.
# /run/asap: the admin socket. Both writable by the asap user only.
COPY --from=build --chown=65532:65532 /out/data /data
COPY --from=build --chown=65532:65532 /out/run/asap /run/asap
ENV XDG_DATA_HOME=/data XDG_CONFIG_HOME=/data/config HOME=/data
USER 65532:65532
VOLUME /data
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=10s --start-period=15s --retries=3 \
  CMD ["/asap-caddy", "asap", "healthcheck", "--address", "unix//run/asap/admin.sock", "--timeout", "5s", "--url", "http://127.0.0.1:8080/.well-known/asap/health"]
ENTRYPOINT ["/asap-caddy"]
CMD ["run", "--config", "/etc/asap/Caddyfile", "--adapter", "caddyfile"]
