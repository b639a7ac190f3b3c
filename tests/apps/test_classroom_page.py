"""The classroom web page: its action on bad input (fast), and the page driven end to end in headless Chromium
(slow): upload a video of real faces, analyse, see the annotated video, timelines, summary, download the CSV."""

from __future__ import annotations

import os
import shutil
import socket
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from apps.classroom import analyze_for_page

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def test_page_action_reports_bad_input_as_a_message(tmp_path) -> None:
    status, *rest = analyze_for_page(None, "", "x.ckpt", 5, 20, output_root=tmp_path)
    assert "Choose a video" in status and rest[0] is None
    # no checkpoint: the shipped face model runs; the missing video is the message
    status, *_ = analyze_for_page(None, str(tmp_path / "lesson.mp4"), "", 5, 20, output_root=tmp_path)
    assert "Could not analyse" in status and "lesson.mp4" in status
    other = tmp_path / "ldm.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "lightning_modules.ldm.LitLDM"}}, other)
    status, *_ = analyze_for_page(None, "lesson.mp4", str(other), 5, 20, output_root=tmp_path)
    assert "Could not analyse" in status and str(other) in status and "LitLDM" in status


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_page_action_on_the_shipped_model_reports_progress_and_can_be_cancelled(tmp_path) -> None:
    """No checkpoint: the shipped model through the inference pipeline; progress reaches the page's callback with
    a total; a cancel event set by the page's Cancel button stops the run, keeping what was analysed."""
    import threading

    from tests.fakes_classroom import classroom_video

    video = classroom_video(tmp_path / "lesson.mp4", n_frames=20)
    seen: list[tuple] = []
    status, *rest = analyze_for_page(None, str(video), "", 1, 20, output_root=tmp_path / "a",
                                     progress=lambda *a: seen.append(a))
    assert "2 student(s)" in status and "angry" in status, status  # the model's class names
    assert seen and seen[-1][0] == seen[-1][1] == 20, seen[-3:]  # (frames done, total, eta)
    report = Path(rest[-1])
    assert report.name == "report.html" and "surprise" in report.read_text()
    stop = threading.Event()

    def cancel_at_five(done, total, eta):
        if done == 5:
            stop.set()

    status, *_ = analyze_for_page(None, str(video), "", 1, 20, output_root=tmp_path / "b", progress=cancel_at_five,
                                  cancel=stop)
    assert status.startswith("**Cancelled**") and "5 of 20 frames" in status, status


@pytest.mark.slow
def test_page_end_to_end_in_headless_chromium(tmp_path) -> None:
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (/usr/bin/chromium, chromedriver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from apps.classroom import build_app
    from tests.fakes_classroom import classroom_video

    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    video = classroom_video(tmp_path / "lesson.mp4", n_frames=20)
    out_root = tmp_path / "analyses"
    out_root.mkdir()
    port = _free_port()
    demo = build_app(None, output_root=out_root)  # as `python -m apps.classroom` without --ckpt: the shipped model
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                allowed_paths=[str(out_root)])
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,1600",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 120)
        upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#upload input[type=file]")))
        upload.send_keys(str(video))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#upload video")))
        assert driver.find_element(By.CSS_SELECTOR, "#ckpt textarea, #ckpt input").get_attribute("value") == ""
        assert driver.find_element(By.CSS_SELECTOR, "#cancel").is_displayed()
        driver.find_element(By.CSS_SELECTOR, "#analyze").click()
        WebDriverWait(driver, 600).until(
            lambda d: "student(s)" in d.find_element(By.ID, "status").text
            or "Could not" in d.find_element(By.ID, "status").text)
        status = driver.find_element(By.ID, "status").text
        assert "2 student(s)" in status, status
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#annotated video[src]")))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#timeline img[src]")))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#summary_png img[src]")))
        time.sleep(1.0)  # let the images and the table finish painting
        shot = tmp_path / "classroom_page.png"
        driver.save_screenshot(str(shot))
        (tmp_path / "page.html").write_text(driver.page_source)
        if os.environ.get("CLASSROOM_SCREENSHOT"):
            shutil.copy(shot, os.environ["CLASSROOM_SCREENSHOT"])
            shutil.copy(tmp_path / "page.html", os.environ["CLASSROOM_SCREENSHOT"] + ".html")
        table = driver.find_element(By.ID, "summary_table").text
        assert "longest_spell_class" in table and "share_happy" in table, table  # the shipped model's classes
        report = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#report a[href]")))
        with urllib.request.urlopen(report.get_attribute("href"), timeout=30) as resp:  # the one-page report
            page = resp.read().decode()
        assert "<html" in page.lower() and "surprise" in page and "data:image/png;base64," in page
        link = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#csv a[href]")))
        href = link.get_attribute("href")
        assert "emotions.csv" in href
        with urllib.request.urlopen(href, timeout=30) as resp:  # the download works (served by this server)
            assert resp.read().decode().startswith("source,frame,time,track_id,x,y,w,h")
        assert shot.stat().st_size > 10_000
    finally:
        driver.quit()
        demo.close()
