"""Browsers on the bus: the WebSocket gateway a node serves beside its ZeroMQ port.

``framing`` (one WebSocket message <-> one ZeroMQ multipart message, pure),
``http`` (who may open a session, and the dashboard's static files, pure),
``gateway`` (the server: a thread of the node, each WebSocket session relayed to the
node as a ZeroMQ client of its own). ``static/`` holds the dashboard and the
JavaScript client it loads.
"""
