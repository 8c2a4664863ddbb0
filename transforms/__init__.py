"""The backfill's PTransforms and DoFns; none of them knows which runner or warehouse it runs on."""
