"""Names that said DCNv3 for things that hold any deformable operator (DCNv2, DCNv3, DCNv4) were
renamed; the old names keep working for one version (until 0.3) and say they are deprecated where
Python can say so (a module attribute warns when read)."""

import pytest
from repo_paths import FORK_A


def test_a_loaded_model_lists_its_layers_under_both_names():
    from dcnv3.yolo.loading import load_model

    model = load_model(FORK_A)
    assert model.deformable_layers[0] == "model.4.m.0.cv2.dcnv3" and len(model.deformable_layers) == 5
    assert model.dcnv3_layers == model.deformable_layers


def test_the_old_function_name_warns_and_answers_the_same():
    from dcnv3.yolo import loading

    with pytest.warns(DeprecationWarning, match="use deformable_layer_names"):
        old = loading.dcnv3_layer_names
    assert old is loading.deformable_layer_names
    with pytest.raises(AttributeError):
        loading.no_such_name  # noqa: B018 (the module's __getattr__ must still refuse unknown names)


def test_the_old_trainer_name_warns_and_is_the_trainer():
    from dcnv3 import training

    with pytest.warns(DeprecationWarning, match="use DeformableDetectionTrainer"):
        old = training.DCNv3DetectionTrainer
    assert old is training.DeformableDetectionTrainer
    assert training.configured_trainer(offset_lr_scale=2.0).__name__ == "ConfiguredDeformableTrainer"
