"""``sentinel data fetch``: trade history on disk, in the layouts ``sentinel backtest`` reads.

- Binance (spot and USD-M futures): the public-data archives (``data.binance.vision`` layout), daily and monthly zips
  with their ``.CHECKSUM`` files, downloaded resumably, verified, and unzipped into one CSV per symbol and day
  (``archives.py``; HTTP in ``adapters/http_download.py``).
- Any other exchange (or Binance with ``--source rest``): ccxt's REST trade history, paged by id or time, written as
  ``timestamp,price,amount,side,id`` CSVs, one per symbol and day, resumable from what is on disk (``rest.py``; ccxt in
  ``adapters/ccxt_rest.py``).

What to fetch and where it goes is pure (``plan.py``); ``fetch.py`` runs it with a progress bar.
"""
