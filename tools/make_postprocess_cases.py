"""Expected outputs of HF's Florence-2 post-processor on crafted generations.

Writes tests/fixtures/postprocess_cases.json: `cases[]`, each `{task, text, image_size_wh,
expected}` where `expected` is `Florence2Processor.post_process_generation(text, task=task,
image_size=image_size_wh)` run on the florence2-a processor (its `post_processor_config`
carries the phrase-grounding blacklist). Only HF computes the expected values; a case HF
rejects is stored with `expected = {"error": repr(e)}`.

    /root/fvl-py/bin/python tools/make_postprocess_cases.py
"""

import json
import os

from transformers import Florence2Processor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def locs(*bins):
    return "".join(f"<loc_{b}>" for b in bins)


BOX1 = locs(100, 200, 300, 400)
BOX2 = locs(0, 999, 999, 0)
QUAD = locs(10, 20, 300, 20, 300, 80, 10, 80)

CASES = [
    # description_with_bboxes
    ("<OD>", f"</s><s>car{BOX1}tree{BOX2}{BOX1}</s>", (640, 480)),
    ("<OD>", f"<s>  a dog {BOX1}<pad><pad>", (72, 52)),
    ("<OD>", f"</s><s>car{BOX1}tree{locs(1, 2, 3, 4, 5, 6)}</s>", (640, 480)),  # trailing partial box
    ("<OD>", f"</s><s>car{locs(1, 2, 3)}tree</s>", (640, 480)),  # too few locs
    ("<OD>", f"</s><s>big{locs(1500, 2, 1000, 12345)}</s>", (400, 300)),  # bins outside 0..999
    ("<OD>", "</s><s>just some text</s>", (640, 480)),  # text without locs
    ("<OD>", "", (640, 480)),  # empty output
    ("<OD>", "</s><s></s>", (640, 480)),
    ("<OD>", f"</s><s>caf\u00e9 na\u00efve{BOX1}</s>", (100, 100)),  # non-ASCII dropped from labels
    ("<OD>", f"</s><s>two\nlines{BOX1}x<obj>y{BOX2}</s>", (100, 100)),  # newline: label not found
    ("<OD>", f"</s><s><ground>a cat{BOX1}</s>", (333, 777)),
    ("<DENSE_REGION_CAPTION>", f"</s><s>a red car{BOX1}a green tree{BOX2}</s>", (1000, 1000)),
    ("<DENSE_REGION_CAPTION>", f"</s><s>a red car{BOX1}<loc_5>a green tree{BOX2}</s>", (768, 1024)),
    ("<REGION_PROPOSAL>", f"</s><s>{BOX1}{BOX2}{locs(7, 8, 9)}</s>", (640, 480)),  # empty phrase
    ("<REGION_PROPOSAL>", f"</s><s>junk{BOX1}{locs(1, 2)}x{BOX2}</s>", (401, 299)),
    ("<REGION_PROPOSAL>", "</s><s></s>", (640, 480)),
    ("<OPEN_VOCABULARY_DETECTION>", f"</s><s>a car{BOX1}{BOX2}</s>", (640, 480)),
    ("<OPEN_VOCABULARY_DETECTION>", f"</s><s>a car<poly>{locs(1, 2, 3, 4, 5, 6)}</poly></s>", (640, 480)),
    ("<OPEN_VOCABULARY_DETECTION>", "</s><s>nothing</s>", (640, 480)),
    # phrase grounding (blacklist: "it", "the image", "a", ...)
    ("<CAPTION_TO_PHRASE_GROUNDING>", f"</s><s>a red car{BOX1}{BOX2}a tree{BOX2}</s>", (640, 480)),
    ("<CAPTION_TO_PHRASE_GROUNDING>", f"</s><s>it{BOX1}the image{BOX2}a{BOX1}car{BOX2}</s>", (640, 480)),
    ("<CAPTION_TO_PHRASE_GROUNDING>", f"</s><s> its {BOX1}Image{BOX1}caf\u00e9{BOX2}</s>", (72, 52)),
    ("<CAPTION_TO_PHRASE_GROUNDING>", f"</s><s>car{locs(1, 2, 3, 4, 5)}</s>", (640, 480)),
    ("<CAPTION_TO_PHRASE_GROUNDING>", "", (640, 480)),
    # OCR with region: text + 8 locs -> quad
    ("<OCR_WITH_REGION>", f"</s><s>HELLO{QUAD}world 2{locs(1, 2, 3, 4, 5, 6, 7, 8)}</s>", (900, 400)),
    ("<OCR_WITH_REGION>", f"</s><s>{QUAD}{QUAD}</s>", (90, 40)),  # no text: first quad becomes text
    ("<OCR_WITH_REGION>", f"</s><s>A{QUAD}B{locs(1, 2, 3, 4, 5, 6, 7)}</s>", (90, 40)),  # partial quad
    ("<OCR_WITH_REGION>", f"</s><s>line\nbreak{QUAD}</s>", (90, 40)),
    ("<OCR_WITH_REGION>", "</s><s>plain text</s>", (90, 40)),
    # polygons
    ("<REFERRING_EXPRESSION_SEGMENTATION>",
     f"</s><s>{locs(10, 20, 30, 40, 50, 60)}<sep>{locs(100, 200, 300, 400, 500)}</s>", (640, 480)),
    ("<REFERRING_EXPRESSION_SEGMENTATION>",
     f"</s><s><poly>{locs(10, 20, 30, 40, 50, 60)}</poly><poly>{locs(1, 2, 3, 4, 5, 6, 7)}<sep>{locs(9, 9)}</poly></s>",
     (640, 480)),
    ("<REFERRING_EXPRESSION_SEGMENTATION>", f"</s><s>{locs(1, 2, 3)}</s>", (640, 480)),  # too short
    ("<REFERRING_EXPRESSION_SEGMENTATION>", "</s><s></s>", (640, 480)),
    ("<REFERRING_EXPRESSION_SEGMENTATION>", f"</s><s>{locs(1, 2, 3, 4, 5)}<sep><sep>{locs(6)}</s>", (640, 480)),
    ("<REGION_TO_SEGMENTATION>", f"</s><s>{locs(400, 400, 600, 400, 600, 600, 400, 600)}</s>", (72, 52)),
    ("<REGION_TO_SEGMENTATION>", f"</s><s>{locs(1, 2, 3, 4)}x{locs(5, 6, 7, 8, 1999)}</s>", (123, 456)),
    # pure text (region-to-text, captions, OCR)
    ("<CAPTION>", "</s><s>A car parked next to a tree.</s><pad><pad>", (640, 480)),
    ("<CAPTION>", "", (640, 480)),
    ("<OCR>", "</s><s>  HELLO\n</s>", (640, 480)),
    ("<REGION_TO_CATEGORY>", f"</s><s>car{BOX1}</s>", (640, 480)),
    ("<REGION_TO_DESCRIPTION>", "</s><s>a red car</s>", (640, 480)),
    ("<REGION_TO_OCR>", "</s><s>STOP</s>", (640, 480)),
    ("<MORE_DETAILED_CAPTION>", "<s>x</s>", (1, 1)),
]


def main():
    proc = Florence2Processor.from_pretrained(os.path.join(ROOT, "tests/fixtures/florence2-a"))
    cases = []
    for task, text, size in CASES:
        try:
            expected = proc.post_process_generation(text, task=task, image_size=size)
        except Exception as e:  # noqa: BLE001 - recorded as HF's behaviour
            expected = {"error": repr(e)}
        cases.append({"task": task, "text": text, "image_size_wh": list(size), "expected": expected})
    out = os.path.join(ROOT, "tests/fixtures/postprocess_cases.json")
    with open(out, "w") as f:
        json.dump({"source": "transformers Florence2Processor.post_process_generation", "cases": cases},
                  f, indent=1, ensure_ascii=True)
        f.write("\n")
    print(f"{len(cases)} cases -> {out}")


if __name__ == "__main__":
    main()
