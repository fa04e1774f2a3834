"""The live dashboard: a read-only web app over the store (``nasagent dashboard``).

``store`` (read-only connections and aggregate reads), ``data`` (what each page shows, reusing
the report's numbers), ``server`` (HTTP, ETags, the page's files) and ``static/`` (the page: its
own script and style, no third-party code, nothing fetched from elsewhere). Its layer sits above
``results`` and below ``commands``.
"""
