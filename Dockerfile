# vtt-realtime image: dependencies installed from uv.lock in a builder stage, then copied
# with the application into a clean runtime stage that runs as an unprivileged user.

# The newest 3.11 patch release published with a Debian bookworm slim variant. Both stages
# must use the same base: the virtualenv's interpreter is a symlink into it.
ARG PYTHON_IMAGE=python:3.11.17-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

# The same uv release as the Makefile, so the lock file is read the same way.
ARG UV_VERSION=0.13.8
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
RUN pip install --no-cache-dir "uv==${UV_VERSION}"

WORKDIR /app
COPY pyproject.toml uv.lock ./
# --no-default-groups leaves out both default groups (dev: tests and linters; bench);
# --frozen refuses to resolve anything the lock file does not already say.
RUN uv sync --frozen --no-default-groups --no-install-project --no-cache \
        --python /usr/local/bin/python3


FROM ${PYTHON_IMAGE}

ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN groupadd --system --gid 10001 vtt \
    && useradd --system --uid 10001 --gid vtt --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin vtt

WORKDIR /app
COPY --from=builder /app/.venv /app/.venv
COPY alembic.ini ./
COPY migrations/ migrations/
COPY app/ app/

# Files stay root-owned: the server needs to read them, never to change them.
USER 10001:10001

# python -m app reads PORT (fly.toml sets it to match internal_port).
EXPOSE 8080
CMD ["python", "-m", "app"]
