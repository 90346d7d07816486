import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from terminology.resident_id import birth_date, check_digit, is_placeholder, is_valid, sex, upgrade_15_to_18

# The example of GB 11643-1999: 110105 (Beijing, Chaoyang), born 1949-12-31, sequence 002 (even: female).
# By hand: 1*7 + 1*9 + 0*10 + 1*5 + 0*8 + 5*4 + 1*2 + 9*1 + 4*6 + 9*3 + 1*7 + 2*9 + 3*10 + 1*5 + 0*8 + 0*4
# + 2*2 = 167; 167 mod 11 = 2; '10X98765432'[2] = 'X'.
EXAMPLE = "11010519491231002X"


def test_check_digit_of_the_standards_example():
    assert check_digit("11010519491231002") == "X"
    # 620102 (Lanzhou, Chengguan), 1985-11-20, sequence 042: 6*7 + 2*9 + 1*5 + 2*4 + 1*2 + 9*1 + 8*6 + 5*3
    # + 1*7 + 1*9 + 2*10 + 4*4 + 2*2 = 203; 203 mod 11 = 5 -> '7'.
    assert check_digit("62010219851120042") == "7"
    assert is_valid("620102198511200427")


@pytest.mark.parametrize("bad", ["1101051949123100", "110105194912310021", "1101051949123100a", "", "１１０１０５１９４９１２３１００２"])
def test_check_digit_rejects_non_17_digits(bad):
    with pytest.raises(ValueError):
        check_digit(bad)


def test_is_valid():
    assert is_valid(EXAMPLE)
    assert is_valid(EXAMPLE.lower())
    assert not is_valid("110105194912310021")  # wrong check character
    assert not is_valid(EXAMPLE[:-1])  # too short
    assert not is_valid(EXAMPLE + "1")
    assert not is_valid(None)  # type: ignore[arg-type]
    assert not is_valid("11010519491231002Y")


@pytest.mark.parametrize("first17", ["11010519490230002", "11010519491301002", "11010518791231002", "11010519491200002"])
def test_is_valid_rejects_impossible_birth_dates(first17):
    assert not is_valid(first17 + check_digit(first17))


def test_is_valid_rejects_unknown_province_and_future_births():
    pseudonymised = "99999919800101001"  # the samples' pseudonymisation rewrites the division code to 999999
    assert not is_valid(pseudonymised + check_digit(pseudonymised))
    future = "50010120300101001"
    assert is_valid(future + check_digit(future))
    assert not is_valid(future + check_digit(future), as_of=dt.date(2024, 12, 31))


def test_birth_date_and_sex():
    assert birth_date(EXAMPLE) == dt.date(1949, 12, 31)
    assert sex(EXAMPLE) == "female"
    assert sex("11010519491231001X") == "male"  # the sex digit is read even when the check fails
    assert birth_date("110105491231002") == dt.date(1949, 12, 31)
    assert sex("110105491231003") == "male"
    assert birth_date("11010519490230002X") is None
    assert birth_date("abc") is None and sex("abc") is None and sex("") is None


def test_upgrade_15_to_18():
    assert upgrade_15_to_18("110105491231002") == EXAMPLE
    for bad in ("11010549123100", "1101054912310021", "110105491331002", "11010549123100X"):
        with pytest.raises(ValueError):
            upgrade_15_to_18(bad)


@pytest.mark.parametrize(
    "value",
    ["000000000000000000", "111111111111111111", "XXXXXXXXXXXXXXXXXX", "123456789012345678", "987654321098765432",
     "000000199001010011", "500101000000000012", "000000000000000", "0", "123456"],
)
def test_placeholders(value):
    assert is_placeholder(value)


@pytest.mark.parametrize("value", [EXAMPLE, "110105491231002", "", None, "500101199001011234"])
def test_not_placeholders(value):
    assert not is_placeholder(value)


PROVINCES = ["11", "12", "13", "31", "44", "50", "51", "62", "65", "71", "81", "82"]


@given(
    province=st.sampled_from(PROVINCES),
    rest=st.integers(0, 9999),
    born=st.dates(dt.date(1900, 1, 1), dt.date(2024, 12, 31)),
    seq=st.integers(0, 999),
    pos=st.integers(0, 16),
    delta=st.integers(1, 9),
)
def test_check_digit_makes_any_plausible_number_valid(province, rest, born, seq, pos, delta):
    first17 = f"{province}{rest:04d}{born:%Y%m%d}{seq:03d}"
    idno = first17 + check_digit(first17)
    assert is_valid(idno, as_of=dt.date(2024, 12, 31))
    assert birth_date(idno) == born
    assert sex(idno) == ("male" if seq % 2 else "female")
    # MOD 11-2 detects every single-digit error
    typo = first17[:pos] + str((int(first17[pos]) + delta) % 10) + first17[pos + 1 :] + idno[17]
    assert not is_valid(typo)
