"""Pure functions of traces and routing records: expert counting, CE selection, CAG/AAG/APG, attention knockout."""
