"""The one exception type users see: a one-line message that says what is wrong, where, and what to do."""


class UserError(Exception):
    """Bad input or configuration. The CLI prints the message on one line and exits non-zero."""


class CorruptShardError(UserError):
    """A shard could not be read back as written (truncated, corrupt, wrong sample layout)."""

    def __init__(self, shard: str, what: str):
        super().__init__(
            f"corrupt shard {shard}: {what}; re-run `ds-distil prepare` for this corpus "
            "(or set data.skip_corrupt_shards=true to skip such shards and count them)"
        )
        self.shard, self.what = shard, what
