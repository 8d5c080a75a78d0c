"""The two forms the paired bootstrap computes a round's FID in give torch-fidelity's figure: from covariances, and
from centred rows where the sets have fewer rows than features (the form a search on tens of seeds uses)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autoaccel.metrics.bootstrap import _resampled_fid
from autoaccel.metrics.quality import frechet_distance


@pytest.mark.parametrize(("rows", "reference_rows", "dimensions"), [(48, 48, 192), (16, 40, 192), (300, 48, 64)])
def test_a_rounds_fid_is_torch_fidelitys_in_either_form(rows, reference_rows, dimensions):
    generator = np.random.default_rng(rows)
    reference = generator.standard_normal((reference_rows, dimensions))
    for shift in (0.0, 0.3, 2.0):
        features = generator.standard_normal((rows, dimensions)) * 1.2 + shift
        expected = frechet_distance(torch.from_numpy(features), torch.from_numpy(reference))
        assert _resampled_fid(features, reference, {}) == pytest.approx(expected, rel=1e-7)
    assert _resampled_fid(reference, reference, {}) == pytest.approx(0.0, abs=1e-6)
