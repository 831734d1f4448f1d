"""The event log's sequencer, the bus, and subscription replay."""
