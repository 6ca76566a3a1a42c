"""The contact sheet reads every sampled epoch from disk, in order, one row each."""

import torch
from PIL import Image

from bespoke_pl.pixelart.contact_sheet import contact_sheet, read_epoch_rows


def test_rows_come_from_the_epoch_folders_in_order(tmp_path):
    for epoch, colour in ((10, 200), (2, 100)):
        folder = tmp_path / f"epoch-{epoch:06d}"
        folder.mkdir()
        for i in range(2):
            Image.new("RGB", (24, 24), (colour + i, 0, 0)).save(folder / f"{i:02d}-seed{42 + i}.png")
            Image.new("RGB", (192, 192)).save(folder / f"{i:02d}-seed{42 + i}-raw.png")  # not on the sheet
    rows = read_epoch_rows(tmp_path)
    assert [epoch for epoch, _ in rows] == [2, 10]
    assert [int(image[0, 0, 0]) for image in rows[0][1]] == [100, 101]

    sheet = contact_sheet(rows, cell=48, padding=2)
    assert sheet.shape == (3, 2 + 2 * 50, 48 + 2 + 2 * 50)
    # epoch 2's first image sits in the first row, upscaled 2x with sharp edges
    assert torch.equal(
        sheet[:, 2:50, 50:98], torch.tensor([100, 0, 0], dtype=torch.uint8).view(3, 1, 1).expand(3, 48, 48)
    )
    assert sheet[:, 52:100, :48].amax() == 255  # the label "ep 10"
