"""The data path: stored shards (`records`) -> sampled, decoded clips (`sampling`,
`decode`, `clips`) -> tf.data batches (`pipeline`) -> global arrays on the mesh
(`transfer`); `shard_check` names damaged shards, `video_io` reads video files,
`resize` sizes and resizes frames (pipeline, converter and predictor alike), `labels`
reads class lists.

Nothing here knows about models or training; `data_prep` writes what `records` reads.
"""
