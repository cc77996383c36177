"""Results of a run: one Table per measured configuration, one Row per variant.

Derived numbers (GB/s, fraction of the roofline, each row's ratio) are computed here,
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
    held_bytes: int = None     # mixed tables: params, grads and optimizer state allocated

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
    # The row every other row's ratio compares with. Ours: the ratio in a row is how
    # many times faster ours is than that row. Another row (the dtypes tables' float32
    # one): how many times faster the row is than the reference.
    reference: str = OURS
    notes: list = field(default_factory=list)

    @property
    def ratio_column(self):
        """The header of the ratio column, which says which way the ratio reads."""
        if self.reference == OURS:
            return "ours faster by"
        return f"faster than {self.reference} by"

    def row(self, variant):
        return next((r for r in self.rows if r.variant == variant), None)

    def held_bytes_per_param(self, row):
        return None if row.held_bytes is None else row.held_bytes / self.params

    def roofline_fraction(self, row):
        roofline = row.roofline_gbps or self.roofline_gbps
        if not roofline:
            return None
        return row.gbps / roofline

    def ratio(self, row):
        """The ratio shown in `row` (see ratio_column); None for the reference row
        itself, or when the table has no reference row."""
        reference = self.row(self.reference)
        if reference is None or row is reference:
            return None
        if self.reference != OURS:
            return reference.median_ms / row.median_ms
        if row.ours_beside_ms is not None:  # step tables: ours timed in this row's turns
            return row.median_ms / row.ours_beside_ms
        return row.median_ms / reference.median_ms

    def to_dict(self):
        return dict(
            scenario=self.scenario, title=self.title, shape_set=self.shape_set,
            params=self.params, tensors=self.tensors, dtype=self.dtype, device=self.device,
            roofline_gbps=self.roofline_gbps, reference=self.reference,
            ratio_column=self.ratio_column, notes=list(self.notes),
            rows=[self._row_dict(r) for r in self.rows])

    def _row_dict(self, r):
        s = r.samples
        return dict(
            variant=r.variant, median_ms=s.median, q1_ms=s.q1, q3_ms=s.q3, min_ms=s.min,
            max_ms=s.max, samples_ms=list(s.ms), bytes_per_call=r.bytes_per_call,
            gb_per_s=r.gbps, roofline_gbps=r.roofline_gbps, ours_beside_ms=r.ours_beside_ms,
            roofline_fraction=self.roofline_fraction(r),
            ratio=self.ratio(r), peak_extra_bytes=r.peak_extra_bytes,
            held_bytes=r.held_bytes, held_bytes_per_param=self.held_bytes_per_param(r))
