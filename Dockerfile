# One image for every sentinel service: `sentinel <service>` picks which one runs.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY sentinel ./sentinel
RUN pip install --no-cache-dir .
RUN useradd --create-home sentinel
USER sentinel
ENTRYPOINT ["sentinel"]
CMD ["--help"]
