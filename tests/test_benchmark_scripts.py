"""Tests of the benchmark scripts that need a GPU to measure (benchmarks/cuda_check.py), exercised on CPU so a
broken script is found before a GPU session is spent on it.

Run: pytest -q tests/test_benchmark_scripts.py
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cuda_check_smoke_cpu_correctness_sections_pass(tmp_path):
    """`cuda_check.py --smoke-cpu --no-timing` exits 0 on a machine without CUDA: the chunked and compiled CPU
    kernels are checked against the reference in float64/float32/bfloat16, the whole model (training, OE on)
    chunked against the reference, and Triton -- not runnable here without its interpreter -- is reported as
    skipped with the way to run it, not as a failure."""
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    out = tmp_path / 'checks.json'
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'cuda_check.py'), '--smoke-cpu',
                             '--no-timing', '--json', str(out)], capture_output=True, text=True, env=env,
                            cwd=str(tmp_path), timeout=600)
    tail = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, tail
    checks = json.loads(out.read_text())['checks']
    assert all(c['ok'] for c in checks), [c for c in checks if not c['ok']]
    skipped = [c for c in checks if c.get('skipped')]
    assert [c['name'] for c in skipped] == ['triton'] and 'TRITON_INTERPRET=1' in skipped[0]['skipped']
    names = [c['name'] for c in checks]
    for impl in ('chunked', 'compiled'):
        for dtype in ('float64', 'float32', 'bfloat16'):
            assert any(n.startswith(f'logits {impl} {dtype}') for n in names), (impl, dtype)
            assert any(n.startswith(f'pool {impl} {dtype}') for n in names), (impl, dtype)
    assert {'model logits chunked vs reference', 'model erased logits chunked vs reference'} <= set(names)
    assert 'SKIP triton' in result.stdout and '0 failed, 1 skipped' in result.stdout, tail


def _run_script(tmp_path, script, *args):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', script), *args], capture_output=True,
                            text=True, env=env, cwd=str(tmp_path), timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_memory_backbone_mode_measures_srdl_against_the_bare_backbone_at_every_c(tmp_path):
    """`memory.py --backbone CNN ViT --classes ...` runs, for every backbone and C, the bare backbone with its own
    classifier and SRDL (OE on) each in a fresh process, plus SRDL's head alone on the backbone's own grid (a ViT's
    patch grid), and reports both peaks, both step times and their ratios."""
    out = tmp_path / 'memory.json'
    table = _run_script(tmp_path, 'memory.py', '--backbone', 'test_resnet', 'test_vit', '--classes', '3', '7',
                        '--batch-size', '2', '--img-size', '64', '--threads', '1', '--json', str(out))
    rows = json.loads(out.read_text())['rows']
    models = [(r['model'], r['classes']) for r in rows]
    for backbone in ('test_resnet', 'test_vit'):
        for c in (3, 7):
            assert {(f'bare:{backbone}', c), (f'srdl:{backbone}', c), (f'srdl:{backbone}:head', c)} <= set(models)
    assert all(r['peak_rss'] > 0 and r['seconds'] > 0 and r['loss'] == r['loss'] for r in rows)
    assert '| test_vit | 7 |' in table and 'memory ratio' in table and 'time ratio' in table


def test_timing_transformer_rows_are_srdl_on_a_vit_against_the_bare_vit(tmp_path):
    """`timing.py --rows vit,srdl_vit` times the bare ViT with its own classifier and SRDL on it in the same run
    (inference and a training step with OE), and srdl_vit's ratios are to the vit row."""
    out = tmp_path / 'timing.json'
    _run_script(tmp_path, 'timing.py', '--device', 'cpu', '--rows', 'vit,srdl_vit', '--vit-backbone', 'test_vit',
                '--img-size', '64', '--batch-size', '1', '--train-batch-size', '2', '--num-classes', '5',
                '--warmup', '0', '--repeats', '2', '--threads', '1', '--json', str(out))
    results = {(r['row'], r['mode']): r for r in json.loads(out.read_text())['results']}
    for mode in ('infer', 'train'):
        srdl, vit = results[('srdl_vit', mode)], results[('vit', mode)]
        assert srdl['baseline'] == 'vit' and srdl['time_ratio'] == srdl['ms'] / vit['ms']
        assert srdl['paired_ratio']['n'] == 2
    assert results[('srdl_vit', 'train')]['object_erasing'] is True


def test_oe_diagnosis_measures_what_object_erasing_removes_on_a_saved_model(tmp_path):
    """benchmarks/oe_diagnosis.py on a saved SRDL folder and a COCO-format split with boxes reports, for the K
    classes erased in each image, well-formed shares (presence, box coverage, erased area), feature/logit changes
    and gradient cosines of L_era against L_ori; a folder without weights is refused with an error naming it."""
    import timm

    import srdl_timm  # noqa: F401
    from fixtures_data import perturb, write_coco_json
    from srdl_timm.hub import save_pretrained_dir

    data = write_coco_json(tmp_path / 'data', 'train', num_images=6, image_size=(96, 80))
    model = timm.create_model('srdl_test_resnet', num_classes=len(data['label_names']),
                              label_names=data['label_names'], object_erasing=True, oe_topk=2)
    save_pretrained_dir(perturb(model), tmp_path / 'model')  # perturbed: a trained model's SA is not flat
    out = tmp_path / 'diag.json'
    _run_script(tmp_path, 'oe_diagnosis.py', '--run', str(tmp_path / 'model'), '--root', str(tmp_path / 'data'),
                '--images', '6', '-b', '4', '-j', '0', '--output', str(out))
    result = json.loads(out.read_text())
    assert result['images'] == 6 and result['topk'] == 2 and result['erased_pairs'] == 12
    for key in ('share_erased_present', 'erased_area_mean', 'present_box_covered_mean', 'erased_on_own_box_mean'):
        assert result[key] is None or 0.0 <= result[key] <= 1.0, (key, result[key])
    assert 0.0 < result['erased_area_mean'] <= 1.0
    for key, value in result['gradients'].items():
        assert value == value and (not key.endswith('cosine') or -1.0 - 1e-6 <= value <= 1.0 + 1e-6), (key, value)
    env = dict(os.environ, PYTHONPATH=ROOT)
    bad = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'oe_diagnosis.py'), '--run',
                          str(tmp_path / 'data'), '--root', str(tmp_path / 'data')], capture_output=True, text=True,
                         env=env, cwd=str(tmp_path), timeout=300)
    assert bad.returncode != 0 and 'no model.safetensors' in bad.stderr and str(tmp_path / 'data') in bad.stderr
