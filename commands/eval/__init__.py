"""``reflex eval``: measure a cache's hit and false-hit rates on labelled question pairs.

The harness runs the pairs through the same tiers the gateway uses (the embedder and
verifier gRPC services and an L2 store, behind the Protocols in ``reflex.tiers``)
with the configured thresholds, so the numbers are the ones users will meet.

Modules, one per concern:
  data      reading and validating the pairs (JSONL, .gz, or the bundled fow-cache set)
  tiers     starting/connecting the embedder and verifier, opening a throwaway L2 store
  embedding batched, de-duplicated, on-disk-cached embedding of many texts
  modes     the two measurement modes (pairwise, cache), producing one Judgement per pair
  metrics   hit/false-hit/precision arithmetic, per-category breakdown, threshold sweep
  plot      the sweep as a PNG
  report    text and JSON rendering
  cli       the ``reflex eval`` command
"""
