# One image for every sentinel service: `sentinel <service>` picks which one runs.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY sentinel ./sentinel
RUN pip install --no-cache-dir .
# The services' working directory state (the notifier's .sentinel/alerts.jsonl, an embedded Redis' data_dir) goes
# under /app/.sentinel: the service user must be able to write it (/app itself stays root's).
RUN useradd --create-home sentinel && mkdir -p /app/.sentinel && chown sentinel:sentinel /app/.sentinel
USER sentinel
ENTRYPOINT ["sentinel"]
CMD ["--help"]
