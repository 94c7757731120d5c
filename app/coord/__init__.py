"""Scale-out (README "Running several machines"): who owns a campaign, and how to reach it.

base.py       the seams: Coordinator, Owner, Claim, Owned; LocalCoordinator, what one machine
              without Redis runs (always the owner, fence 0); its sessions have no journal
              (app.session.Journal), so they deliver at once
keys.py       the Redis key of everything, under each campaign's {hash tag}
redis.py      RedisCoordinator: the node lease, fenced campaign claims, the local deadline
oplog.py      RedisOpLog: the write-ahead op log a new owner replays
routing.py    before accept: serve here, answer with fly-replay, or relay
relay.py      the relay to the owner, and the signed identity it carries
forward.py    chat stored on one machine, published by the campaign's owner on another

Nothing outside this package imports redis; with REDIS_URL unset nothing imports redis.py or
oplog.py at all (`app.services` imports them only when clustered). relay.py and forward.py
need no redis; they are only used when clustered.
"""
