"""Password guesses are slowed per account and per client address, with delays that grow, in Redis.

Each key (an account's email, a client address) counts attempts that have not succeeded; the count is
forgotten after an hour without one. Past a number of free attempts every further one imposes a wait
(30 s, doubling, at most 5 min), so a guesser gets a handful of tries an hour while the real owner waits
minutes, never days. An attempt is counted *before* its password is checked, in one Lua script, so a
burst of parallel guesses cannot slip through between a check and a count. Only commands Redis 6.2 has
(the embedded Redis `tuneboard up` runs): EVALSHA, PTTL, INCR, EXPIRE, SET PX, GET, DECR, DEL.
Must not import torch or `workers`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import redis

from app.settings import get_settings

FREE_ATTEMPTS_PER_ACCOUNT = 5
# An office behind one NAT address signs many people in: give the address more room than one account.
FREE_ATTEMPTS_PER_ADDRESS = 20
FIRST_DELAY_SECONDS = 30
MAX_DELAY_SECONDS = 300
FORGET_AFTER_SECONDS = 3600

# KEYS: count, wait key, count, wait key, ... ARGV: forget-after seconds, then (free attempts) per key pair,
# first delay and cap in ms. Returns {ms still to wait, 0} when blocked (nothing counted), else {0, n1, n2, ...}.
_RESERVE = """
local wait = 0
for i = 1, #KEYS, 2 do
  local left = redis.call('PTTL', KEYS[i + 1])
  if left > wait then wait = left end
end
if wait > 0 then return {wait, 0} end
local first, cap = tonumber(ARGV[#ARGV - 1]), tonumber(ARGV[#ARGV])
local result = {0}
for i = 1, #KEYS, 2 do
  local n = redis.call('INCR', KEYS[i])
  redis.call('EXPIRE', KEYS[i], ARGV[1])
  local free = tonumber(ARGV[1 + (i + 1) / 2])
  if n >= free then
    local delay = math.min(cap, first * 2 ^ (n - free))
    redis.call('SET', KEYS[i + 1], n, 'PX', math.floor(delay))
  end
  result[#result + 1] = n
end
return result
"""

# KEYS: account count, account wait key, address count, address wait key. ARGV: the address count this attempt
# reserved. The account forgets everything; the address gives back this attempt and the wait it set, no more.
_SUCCEEDED = """
redis.call('DEL', KEYS[1], KEYS[2])
if redis.call('EXISTS', KEYS[3]) == 1 and redis.call('DECR', KEYS[3]) <= 0 then redis.call('DEL', KEYS[3]) end
if redis.call('GET', KEYS[4]) == ARGV[1] then redis.call('DEL', KEYS[4]) end
return 0
"""


class LimiterUnavailable(RuntimeError):
    """Redis could not be asked: sign-in is refused for now rather than left unthrottled."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """A counted sign-in attempt: wait_seconds > 0 means refused (try again then); else report how it went."""

    wait_seconds: int
    email: str
    address: str
    address_count: int = 0


def _keys(email: str, address: str) -> list[str]:
    # Hashed: an email or an address of any length or content makes a short, safe key.
    account = hashlib.sha256(email.encode()).hexdigest()[:32]
    client = hashlib.sha256(address.encode()).hexdigest()[:32]
    prefix = get_settings().redis_key_prefix + "signin:"
    return [f"{prefix}account:{account}", f"{prefix}account:{account}:wait",
            f"{prefix}address:{client}", f"{prefix}address:{client}:wait"]


def reserve(client: redis.Redis, email: str, address: str) -> Attempt:
    """Count an attempt for the account and the address, or say how long to wait (nothing is counted then)."""
    args = [FORGET_AFTER_SECONDS, FREE_ATTEMPTS_PER_ACCOUNT, FREE_ATTEMPTS_PER_ADDRESS,
            FIRST_DELAY_SECONDS * 1000, MAX_DELAY_SECONDS * 1000]
    try:
        answer = client.register_script(_RESERVE)(keys=_keys(email, address), args=args)
    except redis.RedisError as exc:
        raise LimiterUnavailable(str(exc)) from exc
    if int(answer[0]) > 0:
        return Attempt(max(1, -(-int(answer[0]) // 1000)), email, address)
    return Attempt(0, email, address, int(answer[2]))


def succeeded(client: redis.Redis, attempt: Attempt) -> None:
    """The password was right: the account's count is forgotten; the address only gets this attempt back."""
    try:
        client.register_script(_SUCCEEDED)(keys=_keys(attempt.email, attempt.address), args=[attempt.address_count])
    except redis.RedisError:
        pass  # the count simply stays until it is forgotten; the sign-in itself is fine


def wait_message(seconds: int) -> str:
    """What the sign-in page says about a wait."""
    if seconds < 90:
        return f"Too many failed sign-ins; try again in {seconds} s."
    return f"Too many failed sign-ins; try again in {-(-seconds // 60)} min."
