#!/usr/bin/python3
"""A Python twin of the public DoReMi downstream protocol (doremi/eval_datasets.py
and evaluate_fewshot in doremi/trainer.py), run on local task folders, for
tests/test_downstream.cpp.

usage: downstream_twin.py --data DIR --tasks T[,T...] --tokenizer PATH|bytes --context N --out FILE
                          [--shots K] [--seed S] [--max-samples N] [--max-new-tokens M]
                          [--model DIR | --continuations FILE]
       downstream_twin.py --jobs FILE     FILE: a JSON list of argument lists, run in one process

It follows the public code line by line, with these changes, all documented in
docs/downstream.md:
- datasets.load_from_disk(DIR/<task>) instead of load_dataset(<hub name>);
- squad_v2 iterates its titles in order of first appearance instead of
  set(titles) (whose order changes between Python runs);
- plain generators instead of IterableDataset.from_generator + DataLoader
  (batch size 1, world size 1: the same examples in the same order);
- the continuation is decoded with clean_up_tokenization_spaces=True passed
  explicitly (the default of the transformers versions the public code ran).
--tokenizer bytes: ids 0-255 are UTF-8 bytes and 256 is end-of-text (the C++
ByteTokenizer); decoding drops 256 (the special token), decodes with
errors="replace" and applies transformers' clean_up_tokenization.
--model DIR: GPTNeoXForCausalLM.from_pretrained(DIR).generate, greedy, as the
public code calls it. --continuations FILE: {task: [[ids], ...]} used as the
generated ids instead (for tests without a model).
Output JSON: {"tasks": {task: {"correct", "examples", "accuracy", "examples_detail":
[{"prompt", "input_ids", "answers", "gen_ids", "raw", "processed", "correct"}]}}, "average"}.
"""
import argparse
import json
import os
import string
import sys

import numpy as np
from datasets import concatenate_datasets, load_from_disk


# --- the public eval_datasets.py, with load_from_disk -------------------------------------------------------------
def substring_until(s, split_strs):
    idx = len(s)
    for split_str in split_strs:
        try:
            new_idx = s.index(split_str)
            if new_idx < idx:
                idx = new_idx
        except Exception:
            pass
    return s[:idx]


def pred_postprocess_default(pred):
    pred = pred.strip().lower()
    return substring_until(pred, ['\n']).strip().lower().translate(str.maketrans('', '', string.punctuation))


def eval_func_default(answer, pred):
    if not isinstance(answer, list):
        answer = [answer.strip().lower().translate(str.maketrans('', '', string.punctuation))]
    else:
        answer = [a.strip().lower().translate(str.maketrans('', '', string.punctuation)) for a in answer]
    return pred in answer


def get_eval_dataset(data_dir, dataset_name, seed=42):
    shuffle_train = True
    path = os.path.join(data_dir, dataset_name)
    if dataset_name == 'trivia_qa':
        dataset = load_from_disk(path)
        dataset_train = dataset['train']
        dataset_val = dataset['validation']
        input_key = 'question'
        output_key = 'answer'

        def prompt_transform(ex, context_exs):
            prompt = '\n\n'.join([f"Question: {c_ex[input_key]}\nAnswer: {c_ex[output_key]['aliases'][0]}"
                                  for c_ex in context_exs])
            prompt += f"\n\nQuestion: {ex[input_key]}\nAnswer:"
            answer_list = ex[output_key]['aliases']
            return {'prompt': prompt, 'answer': answer_list}

    elif dataset_name == 'natural_questions':
        dataset = load_from_disk(path)
        dataset_train = dataset['train']
        dataset_val = dataset['validation']

        def prompt_transform(ex, context_exs):
            prompt = '\n\n'.join([f"Q: {c_ex['question']}?\n\nA: {c_ex['answers'][0]}" for c_ex in context_exs])
            prompt += f"\n\nQ: {ex['question']}?\n\nA:"
            answer_list = ex['answers']
            return {'prompt': prompt, 'answer': answer_list}

    elif dataset_name == 'web_questions':
        dataset = load_from_disk(path)
        dataset_train = dataset['train']
        dataset_val = dataset['test']

        def prompt_transform(ex, context_exs):
            prompt = '\n\n'.join([f"Question: {c_ex['question']}\nAnswer: {c_ex['answers'][0]}"
                                  for c_ex in context_exs])
            prompt += f"\n\nQuestion: {ex['question']}\nAnswer:"
            answer_list = ex['answers']
            return {'prompt': prompt, 'answer': answer_list}

    elif dataset_name == 'lambada':
        dataset = load_from_disk(path)
        dataset_train = dataset['validation']
        dataset_val = dataset['test']

        def prompt_transform(ex, context_exs):
            words = ex['text'].split(' ')
            ex_input = ' '.join(words[:-1])
            ex_answer = words[-1]
            context_ex_toks = [c_ex['text'].split(' ') for c_ex in context_exs]
            prompt = '\n\n'.join([f"Input: {' '.join(c_ex_toks[:-1])}\nOutput: {c_ex_toks[-1]}"
                                  for c_ex_toks in context_ex_toks])
            prompt += f"\n\nInput: {ex_input}\nOutput:"
            prompt = "Complete the following sentences.\n\n" + prompt
            answer_list = [ex_answer]
            return {'prompt': prompt, 'answer': answer_list}

    elif dataset_name == 'squad_v2':
        dataset = load_from_disk(path)
        shuffle_train = False
        dataset_val = dataset['validation']
        dataset_val_chunks = []
        dataset_train_chunks = []
        # Deliberate difference: first-appearance order instead of set(...).
        all_titles = list(dict.fromkeys([ex['title'] for ex in dataset_val]))
        for i, title in enumerate(all_titles):
            title_dataset_val = dataset_val.filter(lambda x: x['title'] == title).shuffle(seed + i)
            title_dataset_train = title_dataset_val.select(list(reversed(range(len(title_dataset_val)))))
            assert len(title_dataset_train) == len(title_dataset_val)
            dataset_train_chunks.append(title_dataset_train)
            dataset_val_chunks.append(title_dataset_val)
        dataset_train = concatenate_datasets(dataset_train_chunks)
        dataset_val = concatenate_datasets(dataset_val_chunks)

        def prompt_transform(ex, context_exs):
            for c_ex in [ex] + context_exs:
                if len(c_ex['answers']['text']) == 0:
                    c_ex['answers']['text'] = ['unanswerable']
                assert c_ex['title'] == ex['title']
            prompt = f"Title: {ex['title']}\n\nBackground: {ex['context']}\n\n"
            prompt += '\n\n'.join([f"Question: {c_ex['question']}\n\nAnswer (use Background or answer \"unanswerable\"): {c_ex['answers']['text'][0]}"])  # noqa: E501
            prompt += f"\n\nQuestion: {ex['question']}\n\nAnswer (use Background or answer \"unanswerable\"):"
            answer_list = ex['answers']['text']
            return {'prompt': prompt, 'answer': answer_list}
    else:
        raise ValueError(f"Dataset {dataset_name} not supported")
    return dataset_train, dataset_val, prompt_transform, shuffle_train


# --- tokenizers ----------------------------------------------------------------------------------------------------
class ByteTok:
    eos_token_id = 256

    def __call__(self, text):
        return {'input_ids': list(text.encode('utf-8'))}

    def decode(self, ids):
        from transformers import PreTrainedTokenizerBase
        text = bytes(i for i in ids if i < 256).decode('utf-8', errors='replace')
        return PreTrainedTokenizerBase.clean_up_tokenization(text)


class HfTok:
    def __init__(self, path):
        from transformers import PreTrainedTokenizerFast
        f = os.path.join(path, 'tokenizer.json') if os.path.isdir(path) else path
        self.tok = PreTrainedTokenizerFast(tokenizer_file=f)

    def __call__(self, text):
        return self.tok(text, padding=False, truncation=True)

    def decode(self, ids):
        return self.tok.batch_decode([ids], skip_special_tokens=True, clean_up_tokenization_spaces=True)[0]


# --- evaluate_fewshot ----------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument('--data', required=True)
    ap.add_argument('--tasks', required=True)
    ap.add_argument('--tokenizer', required=True)
    ap.add_argument('--context', type=int, required=True)
    ap.add_argument('--out', required=True)
    ap.add_argument('--shots', type=int, default=1)
    ap.add_argument('--seed', type=int, default=42)
    ap.add_argument('--max-samples', type=int, default=None)
    ap.add_argument('--max-new-tokens', type=int, default=20)
    g = ap.add_mutually_exclusive_group()
    g.add_argument('--model')
    g.add_argument('--continuations')
    a = ap.parse_args(argv)

    tokenizer = ByteTok() if a.tokenizer == 'bytes' else HfTok(a.tokenizer)
    model = None
    if a.model:
        import warnings

        import torch
        import transformers.generation.utils as generation_utils
        from transformers import GPTNeoXForCausalLM
        warnings.filterwarnings('ignore')
        # Debian's torch 1.13 cannot import torch.distributed.fsdp under Python 3.11 (a dataclass
        # error), which generate() imports only to ask whether the model is FSDP-wrapped: it is not.
        generation_utils.is_fsdp_managed_module = lambda module: False
        torch.set_num_threads(1)
        model = GPTNeoXForCausalLM.from_pretrained(a.model, attn_implementation='eager').float().eval()
        model.config.pad_token_id = model.config.eos_token_id
    continuations = json.load(open(a.continuations)) if a.continuations else None
    num_shots = a.shots
    max_new_tokens = a.max_new_tokens
    max_token_length = a.context

    out = {'tasks': {}}
    for dataset_name in a.tasks.split(','):
        dataset_train, dataset_val, prompt_transform, shuffle_train = get_eval_dataset(a.data, dataset_name, a.seed)
        if dataset_train is not None and shuffle_train:
            dataset_train = dataset_train.shuffle(seed=a.seed)
        if a.max_samples is not None:
            dataset_val = dataset_val.select(range(min(a.max_samples, len(dataset_val))))

        def few_shot_generator(ds):
            while True:
                curr_exs = []
                if num_shots == 0:
                    yield curr_exs
                    continue
                for ex in ds:
                    curr_exs.append(ex)
                    if len(curr_exs) == num_shots:
                        yield curr_exs
                        curr_exs = []

        details = []
        num_correct = 0
        for step, (ex, context_exs) in enumerate(zip(dataset_val, few_shot_generator(dataset_train))):
            d = prompt_transform(ex, context_exs)
            prompt, answer = d['prompt'], d['answer']
            input_ids = tokenizer(prompt)['input_ids'][-(max_token_length - max_new_tokens):]
            if model is not None:
                import torch
                inp = torch.tensor([input_ids])
                with torch.no_grad():  # the public call (greedy: do_sample stays False)
                    gen = model.generate(input_ids=inp, max_length=inp.shape[1] + max_new_tokens,
                                         top_k=1, top_p=0, temperature=1)
                gen_ids = gen[0, inp.shape[1]:].tolist()
            else:
                gen_ids = continuations[dataset_name][step]
            raw = tokenizer.decode(gen_ids)
            pred = pred_postprocess_default(raw)
            correct = eval_func_default(answer, pred)
            num_correct += int(correct)
            details.append({'prompt': prompt, 'input_ids': input_ids, 'answers': answer, 'gen_ids': gen_ids,
                            'raw': raw, 'processed': pred, 'correct': bool(correct)})
        n = len(details)
        out['tasks'][dataset_name] = {'correct': num_correct, 'examples': n,
                                      'accuracy': 100 * num_correct / n if n else 0.0, 'details': details}
    accs = [t['accuracy'] for t in out['tasks'].values()]
    out['average'] = float(np.mean(accs))
    with open(a.out, 'w', encoding='utf-8') as f:
        json.dump(out, f, ensure_ascii=False)
    return 0


if __name__ == '__main__':
    if len(sys.argv) == 3 and sys.argv[1] == '--jobs':
        for job in json.load(open(sys.argv[2])):
            main(job)
        sys.exit(0)
    sys.exit(main())
