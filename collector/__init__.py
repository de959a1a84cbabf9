"""hopscope's ground floor: OTLP in, durable spool, DuckDB out.

    receivers (grpc_receiver, http_receiver)
        → decode + validate (otlp_json, validation)
        → admission (pipeline: in-flight budget, backlog bound)
        → durable spool, group-committed fsync (spool)        ← the acknowledgement happens here
        → flattening worker processes (columns)               spool records → Arrow record batches
        → one DuckDB writer (store)                            INSERT ... SELECT from Arrow + spool watermark

The collector never imports the analytics: derived relations follow the `spans` table, not the write path.
"""
