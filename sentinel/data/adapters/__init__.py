"""The only modules of ``sentinel.data`` that import outside clients (httpx, ccxt)."""
