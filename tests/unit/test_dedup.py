from ps.shard.dedup import MAX_ABOVE, DedupTable, Seen


def test_each_sequence_number_is_new_once():
    d = DedupTable()
    assert d.check(1, 1) is Seen.NEW
    d.begin(1, 1)
    assert d.check(1, 1) is Seen.IN_PROGRESS
    d.finish(1, 1)
    assert d.check(1, 1) is Seen.DUPLICATE
    assert d.check(2, 1) is Seen.NEW      # other workers are independent
    assert d.next_seq(1) == 2


def test_out_of_order_and_abort():
    d = DedupTable()
    for seq in (3, 1, 5):
        d.begin(7, seq)
        d.finish(7, seq)
    assert [d.check(7, s) for s in range(1, 7)] == [
        Seen.DUPLICATE, Seen.NEW, Seen.DUPLICATE, Seen.NEW, Seen.DUPLICATE, Seen.NEW]
    d.begin(7, 2)
    d.abort(7, 2)
    assert d.check(7, 2) is Seen.NEW
    assert d.export()[7] == (1, [3, 5])


def test_export_restore_round_trip_and_gap_compaction():
    d = DedupTable()
    for seq in range(2, MAX_ABOVE + 10):   # seq 1 never arrives
        d.finish(0, seq)
    floor, above = d.export()[0]
    assert floor == MAX_ABOVE + 9 and above == []
    again = DedupTable.restore(d.export())
    assert again.check(0, 5) is Seen.DUPLICATE and again.next_seq(0) == MAX_ABOVE + 10
