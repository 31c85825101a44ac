"""The random streams: one id per purpose."""


def test_every_random_stream_has_its_own_id():
    from feddmmr import streams

    ids = {name: value for name, value in vars(streams).items() if name.isupper()}
    assert len(ids) >= 8 and len(set(ids.values())) == len(ids), ids
