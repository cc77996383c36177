"""Results of a run: one Table per measured configuration, one Row per variant.

Derived numbers (GB/s, fraction of the roofline, speedup of ours) are computed here,
once, so the text table, the markdown table, the JSON and the plot agree.
"""

from dataclasses import dataclass, field

from .variants import OURS


@dataclass
class Row:
    variant: str
    samples: object            # timing.Samples
    bytes_per_call: int        # nominal memory traffic of one call
    peak_extra_bytes: int = None
    roofline_gbps: float = None  # CPU step and window tables: the roofline timed in its turns
    ours_beside_ms: float = None  # step tables: ours' median, timed alternately with this row

    @property
    def median_ms(self):
        return self.samples.median

    @property
    def gbps(self):
        return self.samples.gbps(self.bytes_per_call)


@dataclass
class Table:
    scenario: str
    title: str
    shape_set: str
    params: int
    tensors: int
    dtype: str
    device: str
    roofline_gbps: float = None
    rows: list = field(default_factory=list)
    reference: str = OURS  # the row the "ours faster by" column divides by
    notes: list = field(default_factory=list)

    def row(self, variant):
        return next((r for r in self.rows if r.variant == variant), None)

    def roofline_fraction(self, row):
        roofline = row.roofline_gbps or self.roofline_gbps
        if not roofline:
            return None
        return row.gbps / roofline

    def speedup_of_ours(self, row):
        """How many times faster the reference row (ours) is than `row` (None for the
        reference itself, or without it)."""
        ours = self.row(self.reference)
        if ours is None or row is ours:
            return None
        if row.ours_beside_ms is not None:  # set in step tables, whose reference is ours
            return row.median_ms / row.ours_beside_ms
        return row.median_ms / ours.median_ms

    def to_dict(self):
        return dict(
            scenario=self.scenario, title=self.title, shape_set=self.shape_set,
            params=self.params, tensors=self.tensors, dtype=self.dtype, device=self.device,
            roofline_gbps=self.roofline_gbps, reference=self.reference, notes=list(self.notes),
            rows=[self._row_dict(r) for r in self.rows])

    def _row_dict(self, r):
        s = r.samples
        return dict(
            variant=r.variant, median_ms=s.median, q1_ms=s.q1, q3_ms=s.q3, min_ms=s.min,
            max_ms=s.max, samples_ms=list(s.ms), bytes_per_call=r.bytes_per_call,
            gb_per_s=r.gbps, roofline_gbps=r.roofline_gbps, ours_beside_ms=r.ours_beside_ms,
            roofline_fraction=self.roofline_fraction(r),
            speedup_of_ours=self.speedup_of_ours(r), peak_extra_bytes=r.peak_extra_bytes)
