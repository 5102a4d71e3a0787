"""The store every registry is built on: keys and hashes with optional TTLs.

``EmbeddedStore`` keeps everything in one sqlite file (one server, survives restarts);
``RedisStore`` shares it between server replicas. Both are thread-safe. Values are
bytes; callers keep records small (no megabyte values rewritten per heartbeat).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Protocol

from mxfs import envs


class Store(Protocol):
    def get(self, key: str) -> bytes | None: ...
    def put(self, key: str, value: bytes, ttl_s: float | None = None) -> None: ...
    def put_if_absent(self, key: str, value: bytes, ttl_s: float | None = None) -> bool: ...
    def compare_and_put(self, key: str, expected: bytes | None, value: bytes, ttl_s: float | None = None) -> bool: ...
    def delete(self, key: str) -> bool: ...
    def expire(self, key: str, ttl_s: float) -> bool: ...
    def scan(self, prefix: str) -> list[tuple[str, bytes]]: ...
    def hset(self, key: str, mapping: dict[str, bytes], ttl_s: float | None = None) -> None: ...
    def hget(self, key: str, field: str) -> bytes | None: ...
    def hgetall(self, key: str) -> dict[str, bytes]: ...
    def hdel(self, key: str, *fields: str) -> int: ...
    def hmget(self, key: str, fields: list[str]) -> list[bytes | None]: ...
    def zadd(self, key: str, mapping: dict[str, float]) -> None: ...
    def zscores(self, key: str, members: list[str]) -> list[float | None]: ...
    def zrange_by_score(self, key: str, lo: float, hi: float) -> list[str]: ...
    def zcount(self, key: str, lo: float, hi: float) -> int: ...
    def zrem(self, key: str, *members: str) -> int: ...
    def close(self) -> None: ...


class EmbeddedStore:
    """sqlite-backed store; expired entries are invisible and purged lazily."""

    def __init__(self, path: Path | str = ":memory:") -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v BLOB NOT NULL, exp REAL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS h (k TEXT, f TEXT, v BLOB NOT NULL, PRIMARY KEY (k, f))"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS hexp (k TEXT PRIMARY KEY, exp REAL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS z (k TEXT, m TEXT, s REAL NOT NULL, PRIMARY KEY (k, m))")
        self._db.execute("CREATE INDEX IF NOT EXISTS z_score ON z (k, s)")
        self._lock = threading.RLock()

    @staticmethod
    def _exp(ttl_s: float | None) -> float | None:
        return time.time() + ttl_s if ttl_s is not None else None

    def _purge(self, key: str | None = None) -> None:
        now = time.time()
        self._db.execute("DELETE FROM kv WHERE exp IS NOT NULL AND exp <= ?", (now,))
        expired = [r[0] for r in self._db.execute("SELECT k FROM hexp WHERE exp <= ?", (now,))]
        for k in expired:
            self._db.execute("DELETE FROM h WHERE k = ?", (k,))
            self._db.execute("DELETE FROM hexp WHERE k = ?", (k,))

    def get(self, key: str) -> bytes | None:
        with self._lock:
            self._purge()
            row = self._db.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
            return bytes(row[0]) if row else None

    def put(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", (key, value, self._exp(ttl_s)))

    def put_if_absent(self, key: str, value: bytes, ttl_s: float | None = None) -> bool:
        with self._lock:
            self._purge()
            cur = self._db.execute("INSERT OR IGNORE INTO kv VALUES (?, ?, ?)", (key, value, self._exp(ttl_s)))
            return cur.rowcount == 1

    def compare_and_put(self, key: str, expected: bytes | None, value: bytes, ttl_s: float | None = None) -> bool:
        with self._lock:
            if self.get(key) != expected:
                return False
            self.put(key, value, ttl_s)
            return True

    def delete(self, key: str) -> bool:
        with self._lock:
            n = self._db.execute("DELETE FROM kv WHERE k = ?", (key,)).rowcount
            n += self._db.execute("DELETE FROM h WHERE k = ?", (key,)).rowcount
            n += self._db.execute("DELETE FROM z WHERE k = ?", (key,)).rowcount
            self._db.execute("DELETE FROM hexp WHERE k = ?", (key,))
            return n > 0

    def expire(self, key: str, ttl_s: float) -> bool:
        with self._lock:
            self._purge()
            exp = self._exp(ttl_s)
            n = self._db.execute("UPDATE kv SET exp = ? WHERE k = ?", (exp, key)).rowcount
            if self._db.execute("SELECT 1 FROM h WHERE k = ? LIMIT 1", (key,)).fetchone():
                self._db.execute("INSERT OR REPLACE INTO hexp VALUES (?, ?)", (key, exp))
                n += 1
            return n > 0

    def scan(self, prefix: str) -> list[tuple[str, bytes]]:
        with self._lock:
            self._purge()
            rows = self._db.execute(
                "SELECT k, v FROM kv WHERE substr(k, 1, ?) = ? ORDER BY k", (len(prefix), prefix)
            ).fetchall()
            return [(k, bytes(v)) for k, v in rows]

    def hset(self, key: str, mapping: dict[str, bytes], ttl_s: float | None = None) -> None:
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO h VALUES (?, ?, ?)",
                                 [(key, f, v) for f, v in mapping.items()])
            if ttl_s is not None:
                self._db.execute("INSERT OR REPLACE INTO hexp VALUES (?, ?)", (key, self._exp(ttl_s)))

    def hget(self, key: str, field: str) -> bytes | None:
        with self._lock:
            self._purge()
            row = self._db.execute("SELECT v FROM h WHERE k = ? AND f = ?", (key, field)).fetchone()
            return bytes(row[0]) if row else None

    def hgetall(self, key: str) -> dict[str, bytes]:
        with self._lock:
            self._purge()
            return {f: bytes(v) for f, v in self._db.execute("SELECT f, v FROM h WHERE k = ?", (key,))}

    def hdel(self, key: str, *fields: str) -> int:
        with self._lock:
            return sum(
                self._db.execute("DELETE FROM h WHERE k = ? AND f = ?", (key, f)).rowcount for f in fields
            )

    def hmget(self, key: str, fields: list[str]) -> list[bytes | None]:
        with self._lock:
            return [self.hget(key, f) for f in fields]

    # sorted sets (no TTL: members carry their own expiry as the score where needed)

    def zadd(self, key: str, mapping: dict[str, float]) -> None:
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO z VALUES (?, ?, ?)", [(key, m, s) for m, s in mapping.items()])

    def zscores(self, key: str, members: list[str]) -> list[float | None]:
        with self._lock:
            out = []
            for m in members:
                row = self._db.execute("SELECT s FROM z WHERE k = ? AND m = ?", (key, m)).fetchone()
                out.append(row[0] if row else None)
            return out

    def zrange_by_score(self, key: str, lo: float, hi: float) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT m FROM z WHERE k = ? AND s >= ? AND s <= ? ORDER BY s, m", (key, lo, hi))
            return [r[0] for r in rows]

    def zcount(self, key: str, lo: float, hi: float) -> int:
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM z WHERE k = ? AND s >= ? AND s <= ?", (key, lo, hi))
            return row.fetchone()[0]

    def zrem(self, key: str, *members: str) -> int:
        with self._lock:
            return sum(self._db.execute("DELETE FROM z WHERE k = ? AND m = ?", (key, m)).rowcount for m in members)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class RedisStore:
    """Redis-backed store (keys are prefixed so one Redis can host several clusters)."""

    _CAS = """
    local cur = redis.call('GET', KEYS[1])
    if (cur == false and ARGV[1] == '') or cur == ARGV[2] then
      if ARGV[4] ~= '' then redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
      else redis.call('SET', KEYS[1], ARGV[3]) end
      return 1
    end
    return 0
    """

    def __init__(self, url: str, prefix: str = "mxfs:") -> None:
        import redis

        self._r = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._p = prefix
        self._cas = self._r.register_script(self._CAS)

    def _k(self, key: str) -> str:
        return self._p + key

    @staticmethod
    def _px(ttl_s: float | None) -> int | None:
        return max(1, int(ttl_s * 1000)) if ttl_s is not None else None

    def get(self, key: str) -> bytes | None:
        return self._r.get(self._k(key))

    def put(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        self._r.set(self._k(key), value, px=self._px(ttl_s))

    def put_if_absent(self, key: str, value: bytes, ttl_s: float | None = None) -> bool:
        return bool(self._r.set(self._k(key), value, px=self._px(ttl_s), nx=True))

    def compare_and_put(self, key: str, expected: bytes | None, value: bytes, ttl_s: float | None = None) -> bool:
        px = self._px(ttl_s)
        args = ["" if expected is None else "1", expected or b"", value, "" if px is None else str(px)]
        return bool(self._cas(keys=[self._k(key)], args=args))

    def delete(self, key: str) -> bool:
        return bool(self._r.delete(self._k(key)))

    def expire(self, key: str, ttl_s: float) -> bool:
        return bool(self._r.pexpire(self._k(key), self._px(ttl_s)))

    def scan(self, prefix: str) -> list[tuple[str, bytes]]:
        keys = sorted(self._r.scan_iter(match=self._k(prefix) + "*", count=1000, _type="string"))
        values = self._r.mget(keys) if keys else []
        n = len(self._p)
        return [(k.decode()[n:], v) for k, v in zip(keys, values, strict=True) if v is not None]

    def hset(self, key: str, mapping: dict[str, bytes], ttl_s: float | None = None) -> None:
        pipe = self._r.pipeline()
        pipe.hset(self._k(key), mapping=mapping)
        if ttl_s is not None:
            pipe.pexpire(self._k(key), self._px(ttl_s))
        pipe.execute()

    def hget(self, key: str, field: str) -> bytes | None:
        return self._r.hget(self._k(key), field)

    def hgetall(self, key: str) -> dict[str, bytes]:
        return {f.decode(): v for f, v in self._r.hgetall(self._k(key)).items()}

    def hdel(self, key: str, *fields: str) -> int:
        return int(self._r.hdel(self._k(key), *fields)) if fields else 0

    def hmget(self, key: str, fields: list[str]) -> list[bytes | None]:
        return list(self._r.hmget(self._k(key), fields)) if fields else []

    def zadd(self, key: str, mapping: dict[str, float]) -> None:
        self._r.zadd(self._k(key), mapping)

    def zscores(self, key: str, members: list[str]) -> list[float | None]:
        return list(self._r.zmscore(self._k(key), members)) if members else []

    def zrange_by_score(self, key: str, lo: float, hi: float) -> list[str]:
        return [m.decode() for m in self._r.zrangebyscore(self._k(key), lo, hi)]

    def zcount(self, key: str, lo: float, hi: float) -> int:
        return int(self._r.zcount(self._k(key), lo, hi))

    def zrem(self, key: str, *members: str) -> int:
        return int(self._r.zrem(self._k(key), *members)) if members else 0

    def ping(self) -> None:
        """Raises redis' ConnectionError / TimeoutError while Redis does not answer."""
        self._r.ping()

    def close(self) -> None:
        self._r.close()


def backend_name(backend: str | None = None) -> str:
    """The registry backend in use: ``backend``, else ``MX_METADATA_BACKEND``, else ``embedded``."""
    return (backend or envs.MX_METADATA_BACKEND.get() or "embedded").lower()


def open_store(state_dir: Path | None, backend: str | None = None, redis_url: str | None = None) -> Store:
    """``embedded`` (sqlite in ``state_dir``, or memory) or ``redis`` (see :func:`mxfs.envs.redis_url`)."""
    backend = backend_name(backend)
    if backend == "redis":
        url = redis_url or envs.redis_url()
        if not url:
            raise ValueError("MX_METADATA_BACKEND=redis needs REDIS_URL, MX_REDIS_URL or MX_REDIS_HOST")
        return RedisStore(url)
    if backend != "embedded":
        raise ValueError(f"unknown metadata backend {backend!r} (embedded or redis)")
    if state_dir is None:
        return EmbeddedStore()
    state_dir.mkdir(parents=True, exist_ok=True)
    return EmbeddedStore(state_dir / "registry.sqlite3")
