# Shortcuts for the commands in README.md, .ci/run and docs/container.md.
VERSION ?= v1.3.0
IMAGE   ?= asap-sidecar:$(VERSION)
LDFLAGS := -s -w -X github.com/asap-sidecar/asap-sidecar/caddymodule.Version=$(VERSION)

.PHONY: build test race bench fuzz image image-local container-check clean

# The static binary the image ships.
build:
	CGO_ENABLED=0 go build -trimpath -ldflags "$(LDFLAGS)" -o asap-caddy ./cmd/asap-caddy

# The README's test command (it runs with -race).
test:
	go test -race -count=1 ./...

# The README's test command already runs with the race detector.
race: test

bench:
	go test -run '^$$' -bench . ./...

# The fuzz targets as CI runs them.
fuzz:
	go test -run=NONE -fuzz=FuzzParseRequest -fuzztime=200000x ./caddymodule/protocol/
	go test -run=NONE -fuzz=FuzzScanResponseMatchesDecoder -fuzztime=150000x ./caddymodule/protocol/
	go test -run=NONE -fuzz=FuzzParseMetricsMatchesDecoder -fuzztime=50000x ./caddymodule/metering/
	go test -run=NONE -fuzz=FuzzWebSocketFrame -fuzztime=400x ./caddymodule/

# The image from the Dockerfile (pulls golang:1.26).
image:
	docker build --build-arg VERSION=$(VERSION) -t $(IMAGE) .

# The image around the binary built here, no registry needed (podman).
image-local: build
	rm -rf .image-context && mkdir -p .image-context/rootfs/etc/ssl/certs .image-context/rootfs/data .image-context/rootfs/run/asap
	cp asap-caddy .image-context/rootfs/asap-caddy
	cp -r container/etc/. .image-context/rootfs/etc/
	cp /etc/ssl/certs/ca-certificates.crt .image-context/rootfs/etc/ssl/certs/
	podman build --format docker -f Containerfile.local -t $(IMAGE)-local .image-context
	rm -rf .image-context

# Builds image-local's image in a private store and runs it from its rootfs (root).
container-check:
	VERSION=$(VERSION) scripts/container_check.sh

clean:
	rm -rf asap-caddy .image-context asap-data
