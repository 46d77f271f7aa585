import pytest
import torch

import sresnet
from sresnet.demo import DigitsResNet


def test_convert_reports_images_the_model_cannot_take():
    with pytest.raises(ValueError, match=r"cannot run on calib_images of shape \(4, 3, 8, 8\)"):
        sresnet.convert(DigitsResNet(width=4).eval(), torch.zeros(4, 3, 8, 8))
