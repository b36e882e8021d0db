# fastdllm serve, CPU image (docs/DEPLOY.md).
#
#   docker build -t fastdllm:cpu .
#   docker run --rm -p 8000:8000 -v /srv/models/LLaDA-8B-Instruct:/models:ro fastdllm:cpu
#
# The builder compiles the release binary; the runtime stage is Debian slim with the binary, a
# non-root user and the bundled tiny LLaDA (a smoke-test model: `--model /opt/fastdllm/llada-tiny`).
# The model comes from a volume mounted on /models (the default), or from a Hugging Face id
# (`--model GSAI-ML/LLaDA-8B-Instruct`) downloaded into the HF cache on the /data volume.
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p fastdllm-cli --bin fastdllm \
 && install -D -m 0755 target/release/fastdllm /out/fastdllm

FROM ${RUNTIME_IMAGE} AS runtime
# ca-certificates: TLS to the Hugging Face hub; curl: the HEALTHCHECK. Debian stable's
# versions only get security fixes, so they are not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /data --no-create-home fastdllm \
 && mkdir -p /data/hf /models \
 && chown -R fastdllm:fastdllm /data
COPY --from=builder /out/fastdllm /usr/local/bin/fastdllm
COPY fixtures/llada-tiny /opt/fastdllm/llada-tiny
# HF_HOME: the hub cache ($HF_HOME/hub) and token live on the /data volume, so a downloaded
# checkpoint survives the container. RAYON_NUM_THREADS: compute threads (0 = one per CPU the
# container sees); set it to the CPU limit.
ENV HF_HOME=/data/hf \
    RAYON_NUM_THREADS=0
VOLUME ["/data"]
# Numeric, so that Kubernetes can check runAsNonRoot.
USER 10001:10001
WORKDIR /data
EXPOSE 8000
# Liveness only: /ready (readiness) is for the balancer, which must see it turn 503 while the
# server drains. start-period covers a model download on first start.
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8000/health"]
# SIGTERM starts the drain (docs/DEPLOY.md): give `docker stop` more than --drain-timeout
# plus --shutdown-delay, e.g. `docker stop -t 45`, or `--stop-timeout 45` on `docker run`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["fastdllm", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD ["--model", "/models"]
