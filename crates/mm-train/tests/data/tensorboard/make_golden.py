"""Writes golden.tfevents with TensorBoard's own protobuf messages and record writer, for
mm_train::log's test: the same events written by mm must be these bytes.

    pip install --target /tmp/tbpy tensorboard
    PYTHONPATH=/tmp/tbpy python3 crates/mm-train/tests/data/tensorboard/make_golden.py

Then TensorBoard's own reader reads the file back (the check at the end).
"""
import os

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "golden.tfevents")

events = [
    event_pb2.Event(wall_time=1765000000.25, step=0, file_version="brain.Event:2"),
    event_pb2.Event(
        wall_time=1765000012.5,
        step=1,
        summary=summary_pb2.Summary(
            value=[
                summary_pb2.Summary.Value(tag="train/loss", simple_value=0.6931),
                summary_pb2.Summary.Value(tag="val/accuracy", simple_value=0.0),
            ]
        ),
    ),
    event_pb2.Event(
        wall_time=1765000024.75,
        step=300,
        summary=summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag="val/mse", simple_value=-1.5e-3)]),
    ),
]
with open(PATH, "wb") as f:
    writer = RecordWriter(f)
    for e in events:
        writer.write(e.SerializeToString())

from tensorboard.backend.event_processing import event_file_loader

read = list(event_file_loader.EventFileLoader(PATH).Load())
assert [e.step for e in read] == [0, 1, 300], read
assert read[1].summary.value[0].tag == "train/loss"
print("wrote", PATH, os.path.getsize(PATH), "bytes")
