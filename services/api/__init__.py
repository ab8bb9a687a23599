"""The REST/WebSocket API and the web dashboard of sentinel."""
