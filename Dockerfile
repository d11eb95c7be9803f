# syntax=docker/dockerfile:1
# Two images from one file (README "Deploy on Kubernetes"):
#   docker build --target serving -t recsys-serving:0.1.0 .   recall, rank, rerank, gateway (no torch)
#   docker build --target export  -t recsys-export:0.1.0 .    python -m export (adds torch CPU + onnx)
#   docker build --target export-ray -t recsys-export-ray:0.1.0 .   the same plus Ray (deploy/k8s/ray: KubeRay)
# One image runs any server through its command (python -m recall_server|rank_server|rerank_server|gateway).
# Build stages hold the compilers (hnswlib builds from source); runtime stages get only the venv.
# checkov:skip=CKV_DOCKER_2:Kubernetes ignores HEALTHCHECK; deploy/k8s probes grpc.health.v1 natively

FROM python:3.11.14-slim-bookworm AS build
# build-essential is whatever the base image's Debian release ships (the base tag pins that): pinning its
# point version would break the build at every Debian security update, and it never reaches a runtime image
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements requirements
COPY protos protos
COPY recsys recsys
COPY common common
COPY kernels kernels
COPY feedback feedback
COPY recall_server recall_server
COPY rank_server rank_server
COPY rerank_server rerank_server
COPY gateway gateway
COPY export export
# serving venv: the runtime dependencies at the lock file's versions and hashes (requirements/serving.txt, the
# lock `make lock` writes and CI installs from), then the package itself; no tests, benches or export extras
RUN python -m venv /opt/recsys \
    && /opt/recsys/bin/pip install --no-cache-dir --upgrade pip==26.3 \
    && /opt/recsys/bin/pip install --no-cache-dir --require-hashes -r requirements/serving.txt \
    && /opt/recsys/bin/pip install --no-cache-dir --no-deps .

FROM build AS build-export
# the export's lock adds torch's CPU wheel (torch==2.13.0+cpu; the default PyPI wheel pulls in CUDA libraries,
# several GiB the export does not use) and onnx
RUN /opt/recsys/bin/pip install --no-cache-dir --require-hashes \
        --extra-index-url https://download.pytorch.org/whl/cpu -r requirements/export.txt

FROM python:3.11.14-slim-bookworm AS runtime
# a fixed numeric uid/gid so runAsUser in deploy/k8s matches and files on the snapshot volume are readable
RUN groupadd --system --gid 10001 recsys \
    && useradd --system --uid 10001 --gid recsys --no-create-home --shell /usr/sbin/nologin recsys
# numba caches compiled kernels beside the source, read-only here: /tmp is an emptyDir in deploy/k8s.
# One thread per process for numba/OpenMP: replicas, not threads, use the cores (README "Workers").
ENV PATH=/opt/recsys/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/tmp/numba \
    NUMBA_NUM_THREADS=1 \
    OMP_NUM_THREADS=1
WORKDIR /srv
USER 10001:10001

FROM runtime AS export
COPY --from=build-export /opt/recsys /opt/recsys
ENTRYPOINT ["python", "-m", "export"]

FROM build-export AS build-export-ray
# Ray with its train (TorchTrainer) and default (the dashboard's job server a RayJob submits to) extras
RUN /opt/recsys/bin/pip install --no-cache-dir --require-hashes \
        --extra-index-url https://download.pytorch.org/whl/cpu -r requirements/kuberay.txt

# the head, the workers and the RayJob's submitter of deploy/k8s/ray (KubeRay sets each container's command:
# ray start on the nodes, ray job submit in the submitter; the job's entrypoint runs python -m export)
FROM runtime AS export-ray
COPY --from=build-export-ray /opt/recsys /opt/recsys
ENTRYPOINT ["python", "-m", "export"]

# last, so a plain `docker build .` gives the serving image
FROM runtime AS serving
COPY --from=build /opt/recsys /opt/recsys
EXPOSE 50050 50051 50052 50053
ENTRYPOINT ["python", "-m"]
CMD ["gateway", "--snapshot", "/snapshots"]
