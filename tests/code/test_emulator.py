"""The embedded AWS's process: moto's Kinesis shard answers the same with the constant-time lookups, and the
server keeps a client's connection open between requests."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest
from moto.kinesis.models import Shard

from cluster.config import Settings
from cluster.emulator import first_sequence_number, last_sequence_number, records_after


def _shard(count: int) -> Shard:
    shard = Shard(0, 0, 2**128)
    for index in range(count):
        shard.put_record(f"key-{index}", f"data-{index}", "")
    return shard


@pytest.mark.parametrize("count", [0, 1, 7, 300])
def test_shard_lookups_answer_as_moto_does(count: int) -> None:
    shard = _shard(count)
    assert first_sequence_number(shard) == Shard.get_min_sequence_number(shard)
    assert last_sequence_number(shard) == Shard.get_max_sequence_number(shard)
    for after in (0, 1, count // 2, count - 1, count, count + 5):
        for limit in (None, 1, 3, 10_000):
            ours, moto = records_after(shard, str(after), limit), Shard.get_records(shard, str(after), limit)
            assert [r.sequence_number for r in ours[0]] == [r.sequence_number for r in moto[0]]
            assert ours[1:] == moto[1:], (after, limit)


def test_a_shard_with_a_gap_in_its_numbers_is_read_by_moto_s_walk() -> None:
    shard = _shard(10)
    del shard.records[4]
    ours, moto = records_after(shard, "2", 5), Shard.get_records(shard, "2", 5)
    assert [r.sequence_number for r in ours[0]] == [r.sequence_number for r in moto[0]] == [3, 5, 6, 7, 8]


def test_the_embedded_server_keeps_the_connection_open(aws_settings: Settings) -> None:
    endpoint = urlsplit(aws_settings.aws_endpoint_url)
    connection = http.client.HTTPConnection(endpoint.hostname, endpoint.port, timeout=10)
    headers = {  # moto routes by the signature's service; it does not check the signature itself
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": "Kinesis_20131202.ListStreams",
        "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/kinesis/aws4_request, "
        "SignedHeaders=host, Signature=0",
    }
    sockets = []
    for _ in range(3):
        connection.request("POST", "/", body=json.dumps({}), headers=headers)
        response = connection.getresponse()
        assert response.status == 200 and "StreamNames" in json.loads(response.read())
        assert response.getheader("Connection", "").lower() != "close"
        sockets.append(connection.sock)
    assert sockets[0] is not None and sockets[0] is sockets[1] is sockets[2]
    connection.close()
