"""Parsers of the benchmark harness (bench/), fed outputs captured from real wrk and h2load runs.

The outputs below were captured on the project's machine (wrk 4.1.0, h2load 1.52.0) against the
harness's own servers: hypercorn hello (h1, TLS h2), nginx answering 503, haproxy with a dead
backend. Log excerpts are the first or middle lines of the real ``--log-file``.
"""

# Captured tool outputs are kept verbatim, long lines included.
# ruff: noqa: E501

from __future__ import annotations

import pytest

from bench.parsing import (
    ParseError,
    duration_to_ms,
    parse_h2load,
    parse_h2load_log,
    parse_wrk,
    percentile,
)
from bench.report import compute_ratios
from bench.results import Entry

WRK_SATURATION = """\
Running 2s test @ http://127.0.0.1:60799/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    16.00ms    8.94ms 123.87ms   88.90%
    Req/Sec     3.23k     0.93k    5.26k    80.00%
  Latency Distribution
     50%   15.06ms
     75%   20.72ms
     90%   23.21ms
     99%   47.72ms
  6440 requests in 2.01s, 798.71KB read
Requests/sec:   3211.31
Transfer/sec:    398.28KB
"""

WRK_PACED = """\
Running 2s test @ http://127.0.0.1:60799/
  1 threads and 10 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.31ms    1.48ms   8.34ms   82.40%
    Req/Sec     1.01k    24.31     1.06k    70.00%
  Latency Distribution
     50%  562.00us
     75%    1.49ms
     90%    4.16ms
     99%    5.41ms
  2006 requests in 2.01s, 248.79KB read
Requests/sec:    999.02
Transfer/sec:    123.90KB
"""

WRK_NON_2XX = """\
Running 1s test @ http://127.0.0.1:54683/missing
  1 threads and 10 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.96ms    1.57ms   9.13ms   83.95%
    Req/Sec    66.68k     5.66k   75.55k    80.00%
  Latency Distribution
     50%   47.00us
     75%    1.50ms
     90%    3.38ms
     99%    6.71ms
  66592 requests in 1.01s, 11.30MB read
  Non-2xx or 3xx responses: 66592
Requests/sec:  66227.29
Transfer/sec:     11.24MB
"""

WRK_TIMEOUTS = """\
Running 4s test @ http://127.0.0.1:59391/
  1 threads and 10 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.00us    0.00us   0.00us    -nan%
    Req/Sec     3.00      0.00     3.00    100.00%
  Latency Distribution
     50%    0.00us
     75%    0.00us
     90%    0.00us
     99%    0.00us
  10 requests in 4.01s, 2.09KB read
  Socket errors: connect 0, read 0, write 0, timeout 10
  Non-2xx or 3xx responses: 10
Requests/sec:      2.49
Transfer/sec:     533.68B
"""

H2LOAD_TLS_SATURATION = """\
starting benchmark...
spawning thread #0: 50 total client(s). Timing-based test with 0s of warm-up time and 2s of main duration for measurements.
Warm-up started for thread #0.
progress: 10% of clients started
progress: 20% of clients started
progress: 30% of clients started
progress: 40% of clients started
progress: 50% of clients started
progress: 60% of clients started
progress: 70% of clients started
progress: 80% of clients started
progress: 90% of clients started
progress: 100% of clients started
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
TLS Protocol: TLSv1.3
Cipher: TLS_AES_128_GCM_SHA256
Server Temp Key: X25519 253 bits
Application protocol: h2
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 2.00s, 2655.00 req/s, 99.67KB/s
requests: 5310 total, 5810 started, 5310 done, 5310 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 5325 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 199.35KB (204130) total, 30.35KB (31075) headers (space savings 94.05%), 25.93KB (26550) data
                     min         max         mean         sd        +/- sd
time for request:    20.49ms    216.05ms    176.68ms     27.30ms    87.82%
time for connect:     7.39ms     43.59ms     28.02ms     10.97ms    54.00%
time to 1st byte:    44.29ms    102.61ms     95.60ms      8.41ms    98.00%
req/s           :      52.95       57.96       53.07        0.71    98.00%
"""

H2LOAD_TLS_SATURATION_LOG = """\
1795651153204856	200	181626
1795651153204681	200	181808
1795651153204574	200	181928
1795651153204468	200	182044
1795651153204358	200	182160
1795651153204241	200	182284
1795651153204134	200	182399
1795651153204022	200	182517
1795651153203930	200	182623
1795651153203817	200	182771
"""

H2LOAD_H1_HYPERCORN = """\
starting benchmark...
spawning thread #0: 10 total client(s). Timing-based test with 0s of warm-up time and 2s of main duration for measurements.
Warm-up started for thread #0.
progress: 10% of clients started
progress: 20% of clients started
progress: 30% of clients started
progress: 40% of clients started
progress: 50% of clients started
progress: 60% of clients started
progress: 70% of clients started
progress: 80% of clients started
progress: 90% of clients started
progress: 100% of clients started
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Application protocol: http/1.1
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 2.00s, 1000.00 req/s, 124.02KB/s
requests: 2000 total, 2010 started, 2000 done, 0 succeeded, 2000 failed, 0 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 248.05KB (254000) total, 173.83KB (178000) headers (space savings 0.00%), 9.77KB (10000) data
                     min         max         mean         sd        +/- sd
time for request:      742us     46.31ms      2.44ms      4.39ms    97.45%
time for connect:        5us        62us        34us        17us    70.00%
time to 1st byte:    41.34ms     46.32ms     44.01ms      1.42ms    70.00%
req/s           :      99.92       99.93       99.92        0.00    70.00%
"""

H2LOAD_H1_HYPERCORN_LOG = """\
1795651154222999	0	41280
1795651154222969	0	43372
1795651154222974	0	43374
1795651154233181	0	33170
1795651154222988	0	43367
1795651154222992	0	43365
"""

H2LOAD_503 = """\
starting benchmark...
spawning thread #0: 2 total client(s). 20 total requests
Application protocol: h2c
progress: 10% done
progress: 20% done
progress: 30% done
progress: 40% done
progress: 50% done
progress: 60% done
progress: 70% done
progress: 80% done
progress: 90% done
progress: 100% done

finished in 1.05ms, 19011.41 req/s, 1.39MB/s
requests: 20 total, 20 started, 20 done, 0 succeeded, 20 failed, 0 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 0 4xx, 20 5xx
traffic: 1.50KB (1538) total, 1.02KB (1040) headers (space savings 46.94%), 40B (40) data
                     min         max         mean         sd        +/- sd
time for request:       62us       237us       100us        63us    80.00%
time for connect:       98us       229us       164us        92us   100.00%
time to 1st byte:      347us       514us       431us       118us   100.00%
req/s           :   10303.80    11637.07    10970.43      942.76   100.00%
"""

H2LOAD_503_LOG = """\
1795651163659718	503	196
1795651163659718	503	237
1795651163659752	503	228
"""


def test_wrk_saturation_figures() -> None:
    """wrk --latency output gives requests, req/s and the 50%/99% latency lines in ms."""
    result = parse_wrk(WRK_SATURATION)
    assert result.requests == 6440
    assert result.duration_s == pytest.approx(2.01)
    assert result.rps == pytest.approx(3211.31)
    assert result.p50_ms == pytest.approx(15.06)
    assert result.p99_ms == pytest.approx(47.72)
    assert result.errors == 0


def test_wrk_microsecond_latencies() -> None:
    """Latencies printed in us are converted to ms (paced run at 1000 req/s)."""
    result = parse_wrk(WRK_PACED)
    assert result.rps == pytest.approx(999.02)
    assert result.p50_ms == pytest.approx(0.562)
    assert result.p99_ms == pytest.approx(5.41)


def test_wrk_non_2xx_are_errors() -> None:
    """'Non-2xx or 3xx responses' counts as errors."""
    assert parse_wrk(WRK_NON_2XX).errors == 66592


def test_wrk_socket_errors_are_errors() -> None:
    """Socket errors (here timeouts) add to the non-2xx responses."""
    result = parse_wrk(WRK_TIMEOUTS)
    assert result.requests == 10
    assert result.errors == 20


def test_wrk_without_latency_flag_is_rejected() -> None:
    """Output lacking the latency distribution raises ParseError instead of inventing a p99."""
    without = "\n".join(line for line in WRK_SATURATION.splitlines() if "%" not in line)
    with pytest.raises(ParseError):
        parse_wrk(without)


def test_h2load_log_percentiles() -> None:
    """The per-request log yields sorted latencies in ms and nearest-rank percentiles."""
    log = parse_h2load_log(H2LOAD_TLS_SATURATION_LOG)
    assert len(log.latencies_ms) == 10
    assert log.latencies_ms[0] == pytest.approx(181.626)
    assert percentile(log.latencies_ms, 50) == pytest.approx(182.160)
    assert percentile(log.latencies_ms, 99) == pytest.approx(182.771)
    assert log.failed_streams == log.error_statuses == log.unparsed_status == 0


def test_h2load_summary_with_log() -> None:
    """The summary gives done requests and req/s; p50/p99 come from the log."""
    result = parse_h2load(H2LOAD_TLS_SATURATION, parse_h2load_log(H2LOAD_TLS_SATURATION_LOG))
    assert result.requests == 5310
    assert result.duration_s == pytest.approx(2.0)
    assert result.rps == pytest.approx(2655.0)
    assert result.p50_ms == pytest.approx(182.160)
    assert result.p99_ms == pytest.approx(182.771)
    assert result.errors == 0


def test_h2load_summary_without_log_has_no_percentiles() -> None:
    """Without a log, h2load's min/max/mean/sd are not passed off as percentiles."""
    result = parse_h2load(H2LOAD_TLS_SATURATION)
    assert result.p50_ms is None
    assert result.p99_ms is None


def test_h2load_5xx_are_errors() -> None:
    """h2load's 'failed' count (here 503s) is the error count; the log shows their status."""
    log = parse_h2load_log(H2LOAD_503_LOG)
    assert log.error_statuses == 3
    assert parse_h2load(H2LOAD_503, log).errors == 20


def test_h2load_h1_empty_reason_phrase_not_counted_as_errors() -> None:
    """hypercorn's empty reason phrase leaves status 0 in h2load: unreadable, not failed."""
    log = parse_h2load_log(H2LOAD_H1_HYPERCORN_LOG)
    assert log.unparsed_status == 6
    result = parse_h2load(H2LOAD_H1_HYPERCORN, log)
    assert result.requests == 2000
    assert result.rps == pytest.approx(1000.0)
    assert result.errors == 0
    assert result.unparsed_status == 6


def test_h2load_garbage_is_rejected() -> None:
    """Output without h2load's summary raises ParseError."""
    with pytest.raises(ParseError):
        parse_h2load("h2load: could not connect\n")


def test_duration_units() -> None:
    """wrk/h2load duration strings convert to milliseconds."""
    assert duration_to_ms("850us") == pytest.approx(0.85)
    assert duration_to_ms("1.5ms") == pytest.approx(1.5)
    assert duration_to_ms("2.01s") == pytest.approx(2010.0)
    assert duration_to_ms("1m") == pytest.approx(60000.0)


def test_ratios_pair_same_protocol_and_shape() -> None:
    """A compared row is divided by each reference with the same protocol and shape only."""
    entries = [
        Entry(row="shoal-gateway", protocol="h1", shape="saturation", rps=2000.0, p99_ms=30.0),
        Entry(row="nginx-proxy", protocol="h1", shape="saturation", rps=50000.0, p99_ms=3.0),
        Entry(row="nginx-proxy", protocol="h2c", shape="saturation", rps=30000.0, p99_ms=9.0),
        Entry(row="direct", protocol="h1", shape="saturation", status="error"),
    ]
    ratios = compute_ratios(entries, ["shoal-gateway"], ["nginx-proxy", "direct"])
    assert len(ratios) == 1
    assert ratios[0].reference == "nginx-proxy"
    assert ratios[0].rps_ratio == pytest.approx(0.04)
    assert ratios[0].p99_ratio == pytest.approx(10.0)


def test_flood_frames_are_what_they_claim() -> None:
    """The floods' GET decodes to a GET /; a made-you-reset batch ends each stream then sends
    DATA on it; a rapid-reset batch cancels each stream it opens."""
    import hpack
    from hyperframe.frame import DataFrame, HeadersFrame, RstStreamFrame

    from bench.floods import BATCH, GET, made_you_reset, rapid_reset

    assert hpack.Decoder().decode(GET) == [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "bench"),
    ]
    mine = made_you_reset(1)
    assert len(mine) == 2 * BATCH
    assert isinstance(mine[0], HeadersFrame) and "END_STREAM" in mine[0].flags
    assert isinstance(mine[1], DataFrame) and mine[1].stream_id == mine[0].stream_id == 1
    rapid = rapid_reset(3)
    assert isinstance(rapid[1], RstStreamFrame) and rapid[1].stream_id == 3
    assert rapid[-1].stream_id == 3 + 2 * (BATCH - 1)


def test_attacker_sockets_counts_the_gateways_live_connections_from_127_0_0_1() -> None:
    """Sockets on the gateway's port from 127.0.0.1, in any state but LISTEN and TIME_WAIT;
    the victim's (127.0.0.2) and other ports' do not count."""
    from bench.floods import attacker_sockets

    header = "  sl  local_address rem_address   st\n"
    rows = [
        "0: 0100007F:1F90 00000000:0000 0A",  # the listener
        "1: 0100007F:1F90 0100007F:C350 01",  # established, attacker
        "2: 0100007F:1F90 0100007F:C351 08",  # close-wait, attacker
        "3: 0100007F:1F90 0100007F:C352 06",  # time-wait: gone as far as we care
        "4: 0100007F:1F90 0200007F:C353 01",  # the victim, 127.0.0.2
        "5: 0100007F:1F91 0100007F:C354 01",  # another port
    ]
    assert attacker_sockets(8080, header + "\n".join(rows)) == 2
